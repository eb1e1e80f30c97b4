"""Package hygiene: lean import, `python -m qkernels.info`, torch-free kernel sources."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_import_is_lean():
    """`import qkernels` neither imports triton nor initializes CUDA."""
    code = (
        "import sys, torch, qkernels; "
        "assert 'triton' not in sys.modules, 'triton imported'; "
        "assert not torch.cuda.is_initialized(), 'cuda initialized'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_info_reports_backends():
    out = subprocess.run([sys.executable, "-m", "qkernels.info"], check=True, capture_output=True, text=True).stdout
    for name in ("reference", "cpu", "cuda", "triton", "torch"):
        assert name in out


def test_kernel_sources_are_torch_free():
    sources = list((ROOT / "csrc" / "include").rglob("*.h")) + list((ROOT / "csrc" / "cpu").glob("*")) + list(
        (ROOT / "csrc" / "cuda").glob("*")
    )
    assert sources
    for path in sources:
        includes = re.findall(r'#include\s+[<"]([^>"]+)', path.read_text())
        bad = [i for i in includes if i.split("/")[0] in ("torch", "ATen", "c10")]
        assert not bad, f"{path} includes {bad}"


def test_former_module_names_are_the_family_modules():
    """qkernels.ops and qkernels.learnable (the public modules' names before the families had a module each) are
    the fake-quant and learnable family modules, under both import forms."""
    code = (
        "import qkernels, qkernels.ops, qkernels.learnable; "
        "from qkernels.ops import fake_quantize_per_tensor_affine; "
        "from qkernels.learnable import fake_quantize_learnable_per_group_affine; "
        "assert qkernels.ops is qkernels.fake_quant and qkernels.learnable is qkernels.fake_quant_learnable; "
        "assert fake_quantize_per_tensor_affine is qkernels.fake_quantize_per_tensor_affine"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
