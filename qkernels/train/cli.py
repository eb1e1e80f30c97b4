"""``python -m qkernels.train`` / ``qkernels-train``: ``run`` (one training run) and ``compare`` (methods × bit
widths). Bad configuration exits with status 2 and a message naming the flag, before any training."""

from __future__ import annotations

import argparse
import shlex
import sys

from .config import (
    AGGREGATIONS,
    GRAD_INITS,
    INTERVALS,
    METHODS,
    OPTIMIZERS,
    SCALE_INITS,
    ConfigError,
    RunConfig,
    keys,
    load_file,
)
from .data import DATASETS
from .models import MODELS

EPILOG = "Outputs: metrics.json, history.csv, checkpoint.pt and PNG plots under --out. See README, 'Training'."


def _bits_list(text: str) -> list:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated bit widths such as 2,3,4, got {text!r}")


def _names(text: str) -> list:
    return [part.strip() for part in text.split(",") if part.strip()]


def _common(parser: argparse.ArgumentParser, *, with_method: bool):
    """The flags of a run; defaults are RunConfig's (shown in --help), applied after the config file."""
    d = RunConfig()
    S = argparse.SUPPRESS
    add = parser.add_argument
    add("--config", default=S, metavar="FILE", help="TOML or JSON file with the same keys as the flags "
        "(batch_size or batch-size); flags given here win")
    add("--data", choices=DATASETS, default=S, help=f"data set (default {d.data}: scikit-learn's, embedded)")
    add("--data-dir", default=S, metavar="PATH", help="directory holding cifar-10-batches-py / cifar-100-python")
    add("--model", choices=MODELS, default=S, help=f"model (default {d.model})")
    if with_method:
        add("--method", choices=METHODS, default=S, help=f"fp, ptq, qat (LSQ), qat+freeze or qat+dampen "
            f"(Nagel et al.'s oscillation freezing / dampening), oscreg (full precision with Wenshøj et al.'s "
            f"oscillation-inducing regularizer, weights quantized after training), or lbt (qat with the layers' "
            f"output gradients quantized too, Kim et al.) (default {d.method})")
        add("--wbits", type=int, default=S, metavar="N", help=f"weight bits, 2-8; oscreg's target (default "
            f"{d.wbits})")
        add("--abits", type=int, default=S, metavar="N", help=f"activation bits, 2-8, or 32: no input quantized "
            f"(weights only); oscreg never quantizes inputs (default {d.abits})")
        add("--init-from", default=S, metavar="DIR", help="start from the float weights of a fp or ptq run in DIR")
    add("--first-last-bits", type=int, default=S, metavar="N",
        help=f"bits of the first and last layer, 2-8 or 32 = full precision (default {d.first_last_bits})")
    add("--per-channel", action="store_true", default=S, help="per-output-channel weight quantizers")
    add("--scale-init", choices=SCALE_INITS, default=S, help=f"initial quantizer scales (default {d.scale_init})")
    add("--grad-scaling", action="store_true", default=S, help="LSQ's gradient scale 1/sqrt(numel * qmax) on "
        "the quantizer scales (off by default, as in Nagel et al.'s runs)")
    add("--epochs", type=int, default=S, metavar="N", help=f"training epochs (default {d.epochs})")
    add("--batch-size", type=int, default=S, metavar="N",
        help=f"global batch, split across processes (default {d.batch_size})")
    add("--lr", type=float, default=S, help=f"learning rate, cosine schedule (default {d.lr})")
    add("--optimizer", choices=OPTIMIZERS, default=S, help=f"sgd (momentum 0.9, Nesterov) or adam "
        f"(default {d.optimizer})")
    add("--weight-decay", type=float, default=S, help=f"weight decay of the weights (default {d.weight_decay})")
    add("--quant-lr", type=float, default=S, help="learning rate of a separate Adam for the quantizer scales "
        "(default: they train in the main optimizer)")
    add("--seed", type=int, default=S, help=f"random seed (default {d.seed})")
    add("--eval-bits", type=_bits_list, default=S, metavar="LIST",
        help=f"cross-bit evaluation bit widths (default {','.join(map(str, d.eval_bits))})")
    add("--calibration-batches", type=int, default=S, metavar="N",
        help=f"batches for scale initialization and PTQ calibration (default {d.calibration_batches})")
    add("--device", default=S, help=f"cpu, cuda or cuda:N (default {d.device})")
    add("--backend", default=S, help="qkernels backend: auto, cuda, triton, cpu, reference (default: "
        "QKERNELS_BACKEND or auto)")
    add("--no-progress", dest="progress", action="store_false", default=S, help="no progress bars")
    osc = parser.add_argument_group("oscillations (qat, qat+freeze, qat+dampen; Nagel et al. 2022)")
    osc.add_argument("--osc-momentum", type=float, default=S, metavar="M",
                     help=f"EMA momentum of the oscillation tracker, in (0, 1] (default {d.osc_momentum})")
    osc.add_argument("--osc-threshold", type=float, default=S, metavar="TAU", help="a weight counts as "
                     f"oscillating when its oscillation EMA exceeds TAU (default {d.osc_threshold})")
    osc.add_argument("--freeze-threshold", type=float, default=S, metavar="START",
                     help=f"qat+freeze: initial freezing threshold (default {d.freeze_threshold})")
    osc.add_argument("--freeze-threshold-final", type=float, default=S, metavar="END",
                     help=f"qat+freeze: final threshold of the cosine schedule (default {d.freeze_threshold_final})")
    osc.add_argument("--freeze-start-frac", type=float, default=S, metavar="F", help="qat+freeze: the "
                     f"schedule starts after this fraction of the steps, threshold 0 before (default "
                     f"{d.freeze_start_frac})")
    osc.add_argument("--dampen-weight", type=float, default=S, metavar="START",
                     help=f"qat+dampen: initial dampening weight (default {d.dampen_weight})")
    osc.add_argument("--dampen-weight-final", type=float, default=S, metavar="END",
                     help=f"qat+dampen: final dampening weight (default {d.dampen_weight_final})")
    osc.add_argument("--dampen-start-frac", type=float, default=S, metavar="F", help="qat+dampen: the "
                     f"cosine starts after this fraction of the steps (default {d.dampen_start_frac})")
    osc.add_argument("--dampen-aggregation", choices=AGGREGATIONS, default=S,
                     help=f"qat+dampen: per-layer normalization (default {d.dampen_aggregation})")
    osc.add_argument("--bn-reestimate", action=argparse.BooleanOptionalAction, default=S,
                     help="qat*: re-estimate BatchNorm statistics on 50 training batches before every evaluation "
                     "(default on)")
    reg = parser.add_argument_group("oscillation-inducing regularizer (oscreg; Wenshøj et al. 2025)")
    reg.add_argument("--lam", type=float, default=S, metavar="LAMBDA", help="weight of the regularizer "
                     "sum_l mean(q(W_l)^2 - W_l^2) in the loss, over the Conv2d/Linear weights at --wbits (the "
                     "first and last at --first-last-bits, as QAT; norm layers not), a finite float >= 0 "
                     f"(default {d.lam:g})")
    grad = parser.add_argument_group("gradient quantization (lbt; Kim et al. 2024)")
    grad.add_argument("--gbits", type=int, default=S, metavar="N", help="bits of the layers' output gradients, "
                      f"2-8 (first and last layer at --first-last-bits) (default {d.gbits})")
    grad.add_argument("--interval", choices=INTERVALS, default=S, help="clip ratio γ (c = γ · max|G|): adapted "
                      "each step to the clipped-fraction target, from the released code's first-batch "
                      f"initialisation, or fixed at --clip-ratio (default {d.interval})")
    grad.add_argument("--clip-ratio", type=float, default=S, metavar="GAMMA", help="γ of --interval fixed (and "
                      f"the start of adaptive with --grad-init none), in (0, 1]; 1 = min-max (default "
                      f"{d.clip_ratio:g})")
    grad.add_argument("--grad-init", choices=GRAD_INITS, default=S, help="--interval adaptive's first-batch γ: "
                      "lbt (the released code's loop, which overshoots below the quantile), quantile (the exact "
                      f"quantile for the target fraction) or none (--clip-ratio) (default {d.grad_init})")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="qkernels-train", description="Quantization-aware training on qkernels' "
                                  "fake-quant kernels.", epilog=EPILOG)
    commands = top.add_subparsers(dest="command", required=True, metavar="{run,compare}")
    run = commands.add_parser("run", help="one training run", epilog=EPILOG,
                              description="One training run: fp, ptq, qat, qat+freeze, qat+dampen, oscreg or lbt.")
    _common(run, with_method=True)
    run.add_argument("--out", default=argparse.SUPPRESS, metavar="DIR",
                     help="output directory (default runs/<data>_<model>_<method>[_wNaM])")
    run.add_argument("--resume", default=argparse.SUPPRESS, metavar="DIR",
                     help="continue the run saved in DIR with its own configuration")
    compare = commands.add_parser("compare", help="methods x bit widths on one data set and model",
                                  description="Trains the float model once, then each method at each bit width "
                                  "(from the float weights); prints a table and the cross-bit matrix (target bits "
                                  "x --eval-bits) and writes results.csv, results.md, accuracy_vs_bits.png and "
                                  "cross_bit.png.", epilog=EPILOG)
    _common(compare, with_method=False)
    compare.add_argument("--methods", type=_names, default=["fp", "ptq", "qat"], metavar="LIST",
                         help=f"comma-separated subset of {','.join(METHODS)} (default fp,ptq,qat)")
    compare.add_argument("--bits", type=_bits_list, default=[2, 3, 4], metavar="LIST",
                         help="bit widths of weights and activations (default 2,3,4)")
    compare.add_argument("--weights-only", action="store_true", help="quantize weights only: ptq and qat* runs "
                         "keep their inputs in full precision (--abits 32), as oscreg and the paper's protocol")
    compare.add_argument("--out", default="runs/compare", metavar="DIR", help="output directory (default "
                         "runs/compare)")
    return top


def _config(args: argparse.Namespace, given: dict) -> RunConfig:
    values = load_file(args.config) if "config" in given else {}
    values.update({key: value for key, value in given.items() if key in keys()})
    return RunConfig(**values)


def _run(args: argparse.Namespace, given: dict):
    from .training import resume, run

    if "resume" in given:
        others = sorted(set(given) - {"resume", "progress", "command"})
        if others:
            raise ConfigError("--resume", "continues the run with its saved configuration; drop "
                              + ", ".join("--" + k.replace("_", "-") for k in others))
        resume(args.resume, progress=given.get("progress"))
    else:
        run(_config(args, given))


def _compare(args: argparse.Namespace, given: dict):
    from .compare import compare

    config = _config(args, given)
    compare(config, args.methods, args.bits, args.out, command="qkernels-train " + shlex.join(sys.argv[1:]),
            weights_only=args.weights_only)


def main(argv: list | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    given = {key: value for key, value in vars(args).items() if key not in ("methods", "bits", "weights_only")}
    try:
        (_run if args.command == "run" else _compare)(args, given)
    except ConfigError as exc:
        print(f"qkernels-train {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
