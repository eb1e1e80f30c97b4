"""The enums that cross between Python and the C++ kernels, read from their one table,
``csrc/include/qkernels/enums.h`` (installed with the package as ``qkernels/enums.h``), which the C++ code includes:
a value is written once, there. Each enum is an ``IntEnum`` whose members pass to the private launcher ops as
their ``int`` arguments.

* ``Flavour``: which aten kernel's arithmetic a launcher reproduces, ``Cpu`` or ``Cuda`` (README, "Numerics
  contract"); ``Flavour.of(name)`` converts the flavour names the Python code uses ("cpu", "cuda").
* ``ZpRule``: the learnable backward's zero-point rule (``TorchPerTensor``, ``Torch``, ``Consistent``).
* ``QParamsMode``: the fused observer's qparams (``Fused``: torch's fused op; ``Observer``: torch.ao's observer).
* ``DType``: the kernels' element type (C++ only; listed for completeness of the table).
"""

from __future__ import annotations

import enum
import os
import re

_HERE = os.path.dirname(os.path.abspath(__file__))
# Installed next to this file (setup.py copies it); in a source tree, where the C++ code has it.
_PATHS = (os.path.join(_HERE, "enums.h"), os.path.join(_HERE, os.pardir, "csrc", "include", "qkernels", "enums.h"))
_ENUM = re.compile(r"^enum class (\w+) : int \{([^}]*)\};", re.M)
_MEMBER = re.compile(r"^\s*(\w+)\s*=\s*(-?\d+)\s*$")


def parse(text: str) -> dict[str, dict[str, int]]:
    """{enum name: {member: value}} of every ``enum class Name : int { A = 0, ... };`` line of ``text``; a member
    without an explicit integer value is an error (the table must say every value)."""
    table = {}
    for name, body in _ENUM.findall(text):
        members = {}
        for item in filter(None, (i.strip() for i in body.split(","))):
            match = _MEMBER.match(item)
            if match is None:
                raise ValueError(f"qkernels enums.h: member {item!r} of {name} needs an explicit integer value")
            members[match.group(1)] = int(match.group(2))
        table[name] = members
    return table


def _read_table() -> dict[str, dict[str, int]]:
    for path in _PATHS:
        if os.path.exists(path):
            with open(path) as f:
                return parse(f.read())
    raise ImportError(f"qkernels: the enum table enums.h is missing (looked in {', '.join(_PATHS)})")


TABLE = _read_table()


class _Flavour(enum.IntEnum):
    @classmethod
    def of(cls, name: str) -> "_Flavour":
        """The member of a flavour name of the Python code: "cpu" -> Cpu, "cuda" -> Cuda."""
        return cls[name.capitalize()]


Flavour = _Flavour("Flavour", TABLE["Flavour"])
DType = enum.IntEnum("DType", TABLE["DType"])
ZpRule = enum.IntEnum("ZpRule", TABLE["ZpRule"])
QParamsMode = enum.IntEnum("QParamsMode", TABLE["QParamsMode"])
