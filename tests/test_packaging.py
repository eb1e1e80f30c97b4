"""What a non-editable install ships: every Python package of the source tree is listed in setup.py (a missing
one installs without its modules), and every console script names a callable that exists."""

import ast
import importlib
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_packages() -> set:
    tree = ast.parse(open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    packages = next(k.value for k in call.keywords if k.arg == "packages")
    return {ast.literal_eval(e) for e in packages.elts}


def test_every_package_is_installed():
    found = {"qkernels.triton_kernels"}  # installed from triton_kernels/ (package_dir)
    for directory, _, files in os.walk(os.path.join(ROOT, "qkernels")):
        if "__init__.py" in files and "__pycache__" not in directory and "triton_kernels" not in directory:
            found.add(os.path.relpath(directory, ROOT).replace(os.sep, "."))
    assert _setup_packages() == found


def test_console_scripts_resolve():
    text = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    section = text.split("[project.scripts]")[1].split("\n[")[0]
    scripts = re.findall(r'^([\w-]+)\s*=\s*"([\w.]+):(\w+)"', section, re.M)
    assert {name for name, _, _ in scripts} == {"qkernels-train", "qkernels-bench"}
    for _, module, function in scripts:
        assert callable(getattr(importlib.import_module(module), function))
