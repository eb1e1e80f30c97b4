"""python -m qkernels.info: labelled columns, backends named (not module paths), --help, and nothing run on CUDA
tensors without a CUDA device."""

import subprocess
import sys

import pytest
import torch

from qkernels import backends, info


@pytest.fixture
def no_cuda(monkeypatch):
    """No CUDA device, and every backend call that would be made with a CUDA tensor fails the test."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real_chosen, real_zeros = backends.chosen, torch.zeros
    touched = []

    def chosen(x, *args, **kwargs):
        if x.device.type == "cuda":
            touched.append("chosen")
            raise AssertionError("a backend was asked about a CUDA tensor without a CUDA device")
        return real_chosen(x, *args, **kwargs)

    def zeros(*args, device=None, **kwargs):
        if device is not None and torch.device(device).type == "cuda":
            touched.append("zeros")
            raise AssertionError("a CUDA tensor was made without a CUDA device")
        return real_zeros(*args, device=device, **kwargs)

    monkeypatch.setattr(backends, "chosen", chosen)
    monkeypatch.setattr(torch, "zeros", zeros)
    return touched


def test_report_labels_columns_and_names_backends(no_cuda):
    text = info.report()
    lines = text.splitlines()
    assert any(line.split()[:5] == ["backend", "CPU", "tensors", "CUDA", "tensors"] for line in lines)
    assert any(line.split()[:5] == ["backend", "native", "extension", "built", "loaded"] for line in lines)
    assert any(line.split()[:4] == ["device", "auto", "picks", "(float32)"] for line in lines)
    for name in ("cuda", "triton", "cpu", "reference"):
        assert any(line.split()[:1] == [name] for line in lines), name
    assert "qkernels._C" not in text  # the extensions are named by the backends they serve
    assert lines[-2].split() == ["cpu", backends.chosen(torch.zeros(4), -128, 127)]
    assert lines[-1].split(None, 1) == ["cuda", info.NO_CUDA]
    assert no_cuda == []


def test_auto_pick_helper_is_what_the_guard_keeps_from_cuda(no_cuda):
    """The fixture does catch a CUDA call: the guard in report() is what keeps it from happening."""
    assert info._auto_pick("cuda").startswith("error: AssertionError")
    assert no_cuda == ["zeros"]


def test_main_prints_the_report(no_cuda, capsys):
    info.main([])
    assert capsys.readouterr().out.startswith("qkernels     ")


def test_help_and_bad_arguments():
    run = [sys.executable, "-m", "qkernels.info"]
    helped = subprocess.run(run + ["--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: python -m qkernels.info")
    assert "auto" in helped.stdout and "CUDA" in helped.stdout
    bad = subprocess.run(run + ["--bogus"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr
