"""What a translation produces: the C++ code, the kernels it registers and the function constants it declares."""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

__all__ = ["KernelEntry", "FunctionConstant", "Translation", "KernelDef"]


@dataclasses.dataclass
class KernelEntry:
    name: str  # Metal function name (host_name)
    call: str  # C++ expression naming the function to call, e.g. fa_fwd<half, 64>
    params: List[Tuple[str, str]]  # (binding kind, value): ("buffer", "3") or ("id", "kIdTgPosInGrid")
    file: str
    line: int
    gates: List[Tuple[int, str]] = dataclasses.field(default_factory=list)  # (buffer index, bool constant's name)
    max_threads: Optional[str] = None  # C++ constant expression of [[max_total_threads_per_threadgroup(N)]]


@dataclasses.dataclass
class FunctionConstant:
    """`constant T name [[function_constant(index)]];` (MSL §5.8.1)."""
    name: str
    index: int
    type: str       # MSL type as declared, e.g. "bool", "int", "float4"
    mtl_type: int   # its MTLDataType code (what setConstantValue:type:atIndex: takes)
    scalar: str     # element type: bool char uchar short ushort int uint long ulong half bfloat float
    components: int
    bytes: int      # size of the value: components x element size
    file: str
    line: int
    slot: int       # position in the module's table


@dataclasses.dataclass
class Translation:
    code: str
    kernels: List[KernelEntry]
    dependencies: List[str]
    warnings: List[str] = dataclasses.field(default_factory=list)
    function_constants: List[FunctionConstant] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class KernelDef:
    """A kernel definition (plain or template) before its instantiations are known."""
    name: str
    is_template: bool
    params: List[Tuple[str, str]]
    host_name: Optional[str]
    file: str
    line: int
    gates: List[Tuple[int, str]] = dataclasses.field(default_factory=list)
    max_threads: Optional[str] = None  # expression; for templates, of the template's parameters
