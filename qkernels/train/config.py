"""A training run's configuration: its keys, defaults, validation, and config files (TOML or JSON).

Every key is also a CLI flag (``batch_size`` is ``--batch-size``); a config file uses the same keys (with
``_`` or ``-``), and flags given on the command line win over it. ``validate`` checks a whole configuration
before any work and raises ``ConfigError`` naming the flag.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from qkernels.grad_quant import INITS as GRAD_INITS
from qkernels.oscillation import AGGREGATIONS

from .data import DATASETS, data_dir_problem
from .models import MODELS

METHODS = ("fp", "ptq", "qat", "qat+freeze", "qat+dampen", "oscreg", "lbt")
QAT_METHODS = ("qat", "qat+freeze", "qat+dampen", "lbt")
INTERVALS = ("adaptive", "fixed")
OPTIMIZERS = ("sgd", "adam")
SCALE_INITS = ("mse", "minmax")
BITS = range(2, 9)
FULL_PRECISION = 32


class ConfigError(ValueError):
    """A bad configuration value; ``flag`` is the CLI flag it came from (``--wbits``)."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")
        self.flag = flag


@dataclass
class RunConfig:
    """One training run. Bit widths are 2-8; ``first_last_bits`` and ``abits`` may also be 32 (full precision;
    ``abits`` 32: no input quantized, weights-only ``ptq``/``qat*``).

    The ``qat*`` methods use ``qkernels.oscillation``: the EMA momentum ``osc_momentum``; the fraction of
    weights with ``ema_oscillation > osc_threshold`` is reported as oscillating; ``qat+freeze``'s threshold
    follows ``CosineSchedule`` from ``freeze_threshold`` to ``freeze_threshold_final`` from
    ``freeze_start_frac`` of the steps on (0 before); ``qat+dampen``'s weight λ likewise from
    ``dampen_weight`` to ``dampen_weight_final`` (λ = ``dampen_weight`` before); ``bn_reestimate``: BatchNorm
    statistics re-estimated before every evaluation.

    ``oscreg`` (Wenshøj et al. 2025) trains in full precision with ``lam`` · the oscillation-inducing
    regularizer at ``wbits`` added to the loss, then quantizes the weights after training (no input is
    quantized; ``abits`` is not used).

    ``lbt`` (Kim et al. 2024) is ``qat`` with every layer's output gradient quantized too
    (``qkernels.nn.GradientQuantizer``: stochastic rounding, per tensor) at ``gbits`` (the first and last layer's
    at ``first_last_bits``, 32 = full precision), its clip ratio γ adapted each step (``interval`` ``"adaptive"``,
    from the first-batch initialisation ``grad_init``: ``"lbt"``, the released code's loop; ``"quantile"``;
    ``"none"``: from ``clip_ratio``) or fixed at ``clip_ratio`` (``"fixed"``; 1 = min-max)."""

    data: str = "digits"
    data_dir: str | None = None
    model: str = "cnn"
    method: str = "qat"
    wbits: int = 4
    abits: int = 4
    first_last_bits: int = 8
    per_channel: bool = False
    scale_init: str = "mse"
    grad_scaling: bool = False
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    quant_lr: float | None = None
    seed: int = 0
    eval_bits: list = field(default_factory=lambda: [2, 3, 4, 8])
    calibration_batches: int = 1
    device: str = "cpu"
    backend: str | None = None
    out: str | None = None
    init_from: str | None = None
    progress: bool = True
    # Nagel et al.'s oscillation tracking (qat*), freezing (qat+freeze) and dampening (qat+dampen)
    osc_momentum: float = 1e-3
    osc_threshold: float = 0.005
    freeze_threshold: float = 0.1
    freeze_threshold_final: float = 0.01
    freeze_start_frac: float = 0.25
    dampen_weight: float = 0.0
    dampen_weight_final: float = 0.1
    dampen_start_frac: float = 0.25
    dampen_aggregation: str = "kernel_mean"
    bn_reestimate: bool = True
    # Wenshøj et al.'s oscillation-inducing regularizer (oscreg)
    lam: float = 1.0
    # Kim et al.'s gradient quantization (lbt)
    gbits: int = 4
    interval: str = "adaptive"
    clip_ratio: float = 1.0
    grad_init: str = "lbt"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def keys() -> tuple:
    return tuple(f.name for f in dataclasses.fields(RunConfig))


def _check_bits(key: str, value, allow_full: bool = False):
    if not isinstance(value, int) or isinstance(value, bool) or not (value in BITS or
                                                                     (allow_full and value == FULL_PRECISION)):
        allowed = "2-8" + (" or 32 (full precision)" if allow_full else "")
        raise ConfigError(flag(key), f"bit width must be {allowed}, got {value!r}")


def _check_choice(key: str, value, choices):
    if value not in choices:
        raise ConfigError(flag(key), f"must be one of {', '.join(choices)}, got {value!r}")


def _check_positive(key: str, value, kind=int):
    if not isinstance(value, kind) or isinstance(value, bool) or not value > 0:
        raise ConfigError(flag(key), f"must be a positive {kind.__name__}, got {value!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_fraction(key: str, value, low_open: bool = False, high_closed: bool = False):
    """``value`` in [0, 1) (``low_open``: 0 excluded; ``high_closed``: 1 included)."""
    ok = _is_number(value) and (value > 0 if low_open else value >= 0) and (value <= 1 if high_closed else value < 1)
    if not ok:
        interval = ("(" if low_open else "[") + "0, 1" + ("]" if high_closed else ")")
        raise ConfigError(flag(key), f"must be a float in {interval}, got {value!r}")


def validate(config: RunConfig) -> RunConfig:
    """Checks every value of ``config`` (the data directory included); raises ``ConfigError`` naming the flag."""
    _check_choice("data", config.data, DATASETS)
    _check_choice("model", config.model, MODELS)
    _check_choice("method", config.method, METHODS)
    _check_choice("optimizer", config.optimizer, OPTIMIZERS)
    _check_choice("scale_init", config.scale_init, SCALE_INITS)
    _check_bits("wbits", config.wbits)
    _check_bits("abits", config.abits, allow_full=True)
    _check_bits("first_last_bits", config.first_last_bits, allow_full=True)
    if not isinstance(config.eval_bits, (list, tuple)):
        raise ConfigError(flag("eval_bits"), f"must be a list of bit widths, got {config.eval_bits!r}")
    for bits in config.eval_bits:
        _check_bits("eval_bits", bits)
    for key in ("epochs", "batch_size", "calibration_batches"):
        _check_positive(key, getattr(config, key))
    _check_positive("lr", float(config.lr) if isinstance(config.lr, int) else config.lr, float)
    if config.quant_lr is not None:
        _check_positive("quant_lr", float(config.quant_lr) if isinstance(config.quant_lr, int)
                        else config.quant_lr, float)
    if not isinstance(config.weight_decay, (int, float)) or config.weight_decay < 0:
        raise ConfigError(flag("weight_decay"), f"must be a float >= 0, got {config.weight_decay!r}")
    _check_fraction("osc_momentum", config.osc_momentum, low_open=True, high_closed=True)
    _check_fraction("osc_threshold", config.osc_threshold)
    _check_fraction("freeze_start_frac", config.freeze_start_frac)
    _check_fraction("dampen_start_frac", config.dampen_start_frac)
    for key in ("freeze_threshold", "freeze_threshold_final", "dampen_weight", "dampen_weight_final"):
        value = getattr(config, key)
        if not (_is_number(value) and 0 <= value < float("inf")):
            raise ConfigError(flag(key), f"must be a finite float >= 0, got {value!r}")
    _check_choice("dampen_aggregation", config.dampen_aggregation, AGGREGATIONS)
    if not (_is_number(config.lam) and 0 <= config.lam < float("inf")):
        raise ConfigError(flag("lam"), f"must be a finite float >= 0, got {config.lam!r}")
    _check_bits("gbits", config.gbits)
    _check_choice("interval", config.interval, INTERVALS)
    _check_choice("grad_init", config.grad_init, GRAD_INITS)
    _check_fraction("clip_ratio", config.clip_ratio, low_open=True, high_closed=True)
    if config.method == "oscreg" and config.per_channel:
        raise ConfigError(flag("per_channel"), "oscreg's regularizer and its evaluation quantize per tensor, as "
                                               "the official code; drop --per-channel")
    if not isinstance(config.bn_reestimate, bool):
        raise ConfigError(flag("bn_reestimate"), f"must be true or false, got {config.bn_reestimate!r}")
    problem = data_dir_problem(config.data, config.data_dir)
    if problem:
        raise ConfigError(flag("data_dir"), problem)
    if config.init_from is not None and not os.path.isfile(os.path.join(config.init_from, "checkpoint.pt")):
        raise ConfigError(flag("init_from"), f"{config.init_from!r} holds no checkpoint.pt of a finished run")
    return config


def load_file(path: str) -> dict:
    """The keys of a TOML (``.toml``) or JSON config file, dashes turned into underscores; unknown keys raise
    ``ConfigError`` for ``--config``."""
    if not os.path.isfile(path):
        raise ConfigError("--config", f"{path!r} does not exist")
    try:
        if path.endswith(".toml"):
            try:
                import tomllib
            except ModuleNotFoundError:  # Python < 3.11
                import tomli as tomllib
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        else:
            with open(path) as f:
                raw = json.load(f)
    except (ValueError, OSError) as exc:  # both parsers' decode errors are ValueErrors
        raise ConfigError("--config", f"cannot read {path!r}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError("--config", f"{path!r} must hold a table of keys, got {type(raw).__name__}")
    values = {key.replace("-", "_"): value for key, value in raw.items()}
    unknown = sorted(set(values) - set(keys()))
    if unknown:
        raise ConfigError("--config", f"unknown keys in {path!r}: {', '.join(unknown)} (known: {', '.join(keys())})")
    return values
