"""Optional dependencies of ``qkernels.train`` (the ``train`` extra), imported only where they are used."""

from __future__ import annotations

import importlib

# top-level module -> (pip package, what the harness uses it for)
_PACKAGES = {
    "sklearn": ("scikit-learn", "the digits data set"),
    "tqdm": ("tqdm", "progress bars"),
    "matplotlib": ("matplotlib", "plots"),
}


def require(module: str):
    """``importlib.import_module(module)``, or an ImportError that names the pip package to install:
    "qkernels.train needs <pip package> (<why>): pip install 'qkernels[train]'". ``module`` may be a submodule
    (``"sklearn.datasets"``); its top-level package must be one of the train extra's."""
    top = module.split(".")[0] if isinstance(module, str) else None
    if top not in _PACKAGES:
        raise ValueError(f"module: {module!r} is not an optional dependency of qkernels.train "
                         f"(known: {', '.join(sorted(_PACKAGES))})")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package, why = _PACKAGES[top]
        raise ImportError(f"qkernels.train needs {package} ({why}): pip install 'qkernels[train]'") from e
