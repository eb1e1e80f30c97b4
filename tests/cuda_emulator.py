"""Builds and loads the CUDA kernels for the CPU emulator (csrc/emu/emulator.h), for tests on any machine.

The `.cu` files of csrc/cuda are compiled by the host C++ compiler after one source rewrite: every launch
``kernel<<<grid, block, shared, stream>>>(args)`` becomes
``::qk_emu::Launch(grid, block, shared, stream)([&](auto... a) { kernel(a...); }, args)``
(line numbers kept). The emulator's own cuda_runtime.h / cuda_fp16.h / cuda_bf16.h
(csrc/emu/include) stand in for the toolkit's, so no CUDA toolkit is needed. With the production CUDA glue
(every csrc/ops/<family>_cuda.cpp, built with QKERNELS_CUDA_EMULATION) they form one shared library that registers
the private launcher ops as ``torch.ops.qkernels_emu._<op>_cuda`` on the CPU dispatch key. A second build,
``qkernels_emu_index64``, divides every index in 64 bits (QKERNELS_CUDA_INDEX32_LIMIT=0), the path the kernels
take only for tensors of 2^31 elements or more.

The library is cached under build/cuda_emu/, keyed by its sources, the compiler (``CXX``, default g++) and
torch, latest build only; concurrent test workers build it once (file lock). ``CXX="g++ -fsanitize=undefined
-fno-sanitize-recover=all"`` builds it with UBSan.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import importlib
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import torch
import torch.utils.cpp_extension as cpp_extension

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
BUILD = ROOT / "build" / "cuda_emu"
LIBRARY = "libqkernels_cuda_emu.so"
COMPILED = ("cuda", "emu", "include", "ops")  # the folders of csrc the library is built from
# library (op namespace) -> the kernels' extra definitions
VARIANTS = {"qkernels_emu": [], "qkernels_emu_index64": ["-DQKERNELS_CUDA_INDEX32_LIMIT=0"]}

CXX_FLAGS = [
    "-std=c++17", "-O2", "-fPIC", "-g0",
    # The arithmetic nvcc --fmad=false compiles: IEEE operations as written (see csrc/emu/emulator.h).
    "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
    # The kernels reinterpret element arrays as 16-byte vectors, as CUDA code does.
    "-fno-strict-aliasing",
    # (no warning flags: a successful build's output is not read; nvcc's -Werror build in CMake is the check)
]
# The glue's launchers have external linkage (one family's eager step calls another's): hidden, so that they never
# bind to the same names in qkernels._C_cuda when both libraries are loaded.
GLUE_FLAGS = ["-fvisibility=hidden"]

# kernel name (template arguments included), launch configuration, opening parenthesis of the arguments.
_LAUNCH = re.compile(r"(?P<kernel>[A-Za-z_][\w:]*(?:<[^;{}]*?>)?)\s*<<<(?P<config>[^;]*?)>>>\s*\(")


def rewrite_launches(source: str) -> str:
    """source with every triple-chevron launch in emulator form; the line count is unchanged."""

    def launch(match: re.Match) -> str:
        newlines = match.group(0).count("\n")
        config = " ".join(match.group("config").split())
        kernel = " ".join(match.group("kernel").split())
        return f"::qk_emu::Launch({config})([&](auto... a) {{ {kernel}(a...); }}, " + "\n" * newlines

    rewritten = _LAUNCH.sub(launch, source)
    if "<<<" in rewritten or ">>>" in rewritten:
        raise ValueError("a kernel launch the rewrite does not recognize is left")
    return rewritten


def _sources() -> list[Path]:
    return sorted((CSRC / "cuda").glob("*.cu"))


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CXX", "g++"))


def _key(library: str) -> str:
    h = hashlib.sha256(library.encode())
    for path in sorted(p for d in COMPILED for p in (CSRC / d).rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    version = subprocess.run(_compiler() + ["--version"], capture_output=True, text=True, check=True).stdout
    abi = str(torch._C._GLIBCXX_USE_CXX11_ABI)
    h.update(" ".join(_compiler() + CXX_FLAGS + GLUE_FLAGS + [version, torch.__version__, abi]).encode())
    return h.hexdigest()[:16]


def _compile_commands(out: Path, library: str) -> list[tuple[list[str], Path]]:
    emu_include = ["-I", str(CSRC / "emu" / "include"), "-I", str(CSRC / "include")] + VARIANTS[library]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    commands = []
    for cu in _sources():
        rewritten = out / f"{cu.stem}.cu.cpp"
        text = rewrite_launches(cu.read_text())
        rewritten.write_text(f'#line 1 "{cu}"\n{text}')
        obj = out / f"{cu.stem}.cu.o"
        commands.append((_compiler() + CXX_FLAGS + emu_include + ["-I", str(CSRC / "cuda"), "-c", str(rewritten),
                                                                 "-o", str(obj)], obj))
    obj = out / "emulator.o"
    commands.append((_compiler() + CXX_FLAGS + ["-c", str(CSRC / "emu" / "emulator.cpp"), "-o", str(obj)], obj))
    torch_include = [a for d in cpp_extension.include_paths() for a in ("-isystem", d)]
    for glue in sorted((CSRC / "ops").glob("*_cuda.cpp")):  # every family's CUDA glue
        obj = out / f"{glue.stem}.o"
        flags = GLUE_FLAGS + [f"-DQKERNELS_CUDA_EMULATION={library}", abi]
        commands.append((_compiler() + CXX_FLAGS + flags + emu_include +
                         ["-I", str(CSRC / "ops")] + torch_include + ["-c", str(glue), "-o", str(obj)], obj))
    return commands


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        log = done.stdout + done.stderr
        raise RuntimeError(f"CUDA emulator build failed:\n{shlex.join(command)}\n{log[:6000]}")


def build(library: str = "qkernels_emu") -> Path:
    """The emulated CUDA library `library` (a key of VARIANTS), built if the cache has none for the current
    sources."""
    root = BUILD / library
    root.mkdir(parents=True, exist_ok=True)
    key = _key(library)
    target = root / key / LIBRARY
    with open(BUILD / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        work = root / f"{key}.partial"
        work.mkdir(exist_ok=True)
        commands = _compile_commands(work, library)
        with concurrent.futures.ThreadPoolExecutor(max(1, min(len(commands), os.cpu_count() or 1))) as pool:
            list(pool.map(_run, [c for c, _ in commands]))
        lib_dirs = [a for d in cpp_extension.library_paths() for a in ("-L", d, f"-Wl,-rpath,{d}")]
        _run(_compiler() + ["-shared", "-o", str(work / LIBRARY)] + [str(o) for _, o in commands] + lib_dirs +
             ["-lc10", "-ltorch_cpu"])
        work.rename(root / key)
        for stale in root.iterdir():  # builds of other sources or compilers
            if stale.is_dir() and stale.name != key:
                shutil.rmtree(stale, ignore_errors=True)
        return target


_loaded: set = set()


def launchers(family: str, library: str = "qkernels_emu"):
    """The native backend's launchers of op family `family` (its launcher contract's adapter, as on a GPU) with
    the private ops of the emulated library `library`: the CUDA kernels and glue on CPU tensors. Pass the Cuda
    flavour."""
    if library not in _loaded:
        torch.ops.load_library(str(build(library)))
        _loaded.add(library)
    return importlib.import_module(f"qkernels.{family}").LAUNCHERS.native("cuda", library)
