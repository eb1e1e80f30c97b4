"""Each op family's launcher contract (qkernels/_launchers.py) and the enum table the launchers' ints come from.

Every family found by pattern (a public module ``qkernels/<family>.py`` with ``LAUNCHERS``) has its launchers
implemented by every backend under the schema's parameter names: the reference (``qkernels.reference.<family>.
Launchers``), Triton (``qkernels.triton_kernels.<family>``) and the native ops of both devices (their kernels
registered where the extensions are built; torch checks each C++ signature against the schema).
"""

import importlib
import inspect
import pkgutil

import pytest
import torch

import qkernels
from qkernels import backends, enums
from qkernels.enums import Flavour, ZpRule

FAMILIES = sorted(
    m.name for m in pkgutil.iter_modules(qkernels.__path__)
    if not m.name.startswith("_") and hasattr(importlib.import_module(f"qkernels.{m.name}"), "LAUNCHERS")
)


def test_every_family_declares_a_contract():
    assert {"fake_quant", "fake_quant_learnable", "fused_observer"} <= set(FAMILIES)
    for family in FAMILIES:
        contract = importlib.import_module(f"qkernels.{family}").LAUNCHERS
        assert contract.family == family and contract.launchers


def _python_adapters(family):
    adapters = [("reference", importlib.import_module(f"qkernels.reference.{family}").Launchers)]
    if backends.availability("triton", "cuda") is None:  # triton importable (no GPU needed to import it)
        adapters.append(("triton", importlib.import_module(f"qkernels.triton_kernels.{family}")))
    return adapters


@pytest.mark.parametrize("family", FAMILIES)
def test_python_adapters_implement_the_schemas(family):
    contract = importlib.import_module(f"qkernels.{family}").LAUNCHERS
    for name, adapter in _python_adapters(family):
        for launcher in contract.launchers:
            parameters = tuple(inspect.signature(getattr(adapter, launcher)).parameters)
            assert parameters == contract.parameters(launcher), f"{name} {family}.{launcher}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("device,key", [("cpu", "CPU"), ("cuda", "CUDA")])
def test_native_ops_implement_the_schemas(family, device, key):
    """The private ops are defined for both devices; where the device's extension is loaded, each has a kernel
    (registered against the schema, which torch checks) and the adapter holds its callables and eager ops."""
    contract = importlib.import_module(f"qkernels.{family}").LAUNCHERS
    for launcher in contract.launchers:
        name = f"qkernels::{contract.op_name(launcher, device)}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, key) == (
            backends.availability(device, device) is None), name
    if backends.availability(device, device) is None:
        native = contract.native(device)
        assert all(callable(getattr(native, n)) for n in contract.launchers)
        assert all(callable(getattr(native, f"{n}_eager")) for n in contract.eager)


def test_enum_table_is_parsed_with_every_value():
    assert enums.TABLE["ZpRule"] == {"TorchPerTensor": 0, "Torch": 1, "Consistent": 2}
    assert enums.parse("enum class Mode : int { A = 3, B = -1 };") == {"Mode": {"A": 3, "B": -1}}
    with pytest.raises(ValueError, match="member 'B' of Mode needs an explicit integer value"):
        enums.parse("enum class Mode : int { A = 0, B };")
    assert Flavour.of("cuda") is Flavour.Cuda and int(Flavour.of("cpu")) == 0


@pytest.mark.skipif(backends.availability("cpu", "cpu") is not None, reason="qkernels._C is not built")
def test_cpp_glue_reads_the_same_table():
    """An int outside the table is rejected by the C++ glue, one inside it accepted."""
    backward = qkernels.fake_quant_learnable.LAUNCHERS.native("cpu").backward
    x = torch.randn(8)
    args = (x, x, torch.empty_like(x), torch.ones(1), torch.zeros(1), 1, 1, 1, 8, -8, 7, 1.0, int(Flavour.Cpu))
    backward(*args, int(ZpRule.Consistent), False, True, torch.float32, torch.float32)
    with pytest.raises(RuntimeError, match="zero-point rule must be a qkernels::ZpRule, got 3"):
        backward(*args, max(ZpRule) + 1, False, True, torch.float32, torch.float32)
