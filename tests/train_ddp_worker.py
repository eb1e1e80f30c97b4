"""Run under torchrun by test_train.py: one qkernels.train run whose every rank saves its final model state
(``<dir>/rank<R>.pt``), so the test can compare ranks with each other and with one process. An optional third
argument is a JSON object of RunConfig keys overriding ``CONFIG``."""

import json
import os
import sys

import torch

from qkernels.train import RunConfig, run

CONFIG = dict(data="digits", model="mlp", method="qat", wbits=3, abits=3, epochs=1, progress=False)


def main(out: str, batch_size: int, overrides: dict):
    rank = int(os.environ["RANK"])

    def save(epoch, model):
        torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))

    run(RunConfig(**(CONFIG | overrides), batch_size=batch_size, out=os.path.join(out, "run")), on_epoch_end=save)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
