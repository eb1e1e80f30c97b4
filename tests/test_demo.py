"""The patch demo (README, Use): it reproduces stock torch bit for bit through patch_torch."""

import importlib.util

import pytest

import qkernels.demo


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="the demo's data ships with scikit-learn")
def test_demo_runs_and_matches_stock_torch(capsys):
    assert qkernels.demo.main() == 0
    out = capsys.readouterr().out
    assert "patched == stock torch, logits and every fake-quantized tensor (torch.equal): True" in out
    assert "fake-quant calls that ran on qkernels while patched: 6" in out
