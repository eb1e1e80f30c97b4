"""Every Triton kernel specialization the launchers make compiles for sm_80 and sm_90 (tests/triton_compile_check.py),
on any machine: the interpreter runs of the other tests cannot catch what only the compiler rejects."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


@pytest.mark.parametrize("arch", [80, 90])
def test_triton_kernels_compile_for(arch):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiler, not the interpreter
    script = Path(__file__).with_name("triton_compile_check.py")
    done = subprocess.run([sys.executable, str(script), str(arch)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"sm_{arch}: compiled "), done.stdout
