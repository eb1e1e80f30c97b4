"""Training harness: end-to-end QAT on qkernels' kernels (see README, "Training").

``python -m qkernels.train run ...`` / ``compare ...`` (also ``qkernels-train``), or from Python::

    from qkernels.train import RunConfig, run, compare, quantize_model
    metrics = run(RunConfig(data="digits", model="cnn", method="qat", wbits=3, abits=3, epochs=5))
    quantize_model(my_model, calibration_batch, wbits=4, abits=4)   # LSQ quantizers on your own model

Needs the ``train`` extra (scikit-learn, tqdm, matplotlib): ``pip install 'qkernels[train]'``.
"""

from .compare import compare
from .config import ConfigError, RunConfig
from .quantize import (
    QuantizedLayer,
    ptq_model,
    quantize_model,
    quantize_weights_max_abs,
    quantizer_parameters,
    weights_max_abs,
)
from .training import accuracy, resume, run

__all__ = ["RunConfig", "ConfigError", "run", "resume", "compare", "accuracy", "quantize_model",
           "quantizer_parameters", "QuantizedLayer", "ptq_model", "quantize_weights_max_abs", "weights_max_abs"]
