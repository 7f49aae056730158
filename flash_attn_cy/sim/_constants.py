"""What `sim.run` specialises a kernel file with: preprocessor macros (like ``-D NAME=VALUE``) and function constant
values (MSL §5.8.1), checked against the file's declarations and packed into the bytes the runtime takes."""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .translate import FunctionConstant

__all__ = ["normalize_defines", "pack_constants", "parse_constant_value"]

_NP_TYPES = {"bool": np.bool_, "char": np.int8, "uchar": np.uint8, "short": np.int16, "ushort": np.uint16,
             "int": np.int32, "uint": np.uint32, "long": np.int64, "ulong": np.uint64, "half": np.float16,
             "float": np.float32}


def _np_type(scalar: str):
    if scalar == "bfloat":
        import ml_dtypes  # numpy has no bfloat16
        return ml_dtypes.bfloat16
    return _NP_TYPES[scalar]


def normalize_defines(defines: Optional[Union[Mapping[str, object], Sequence[str]]]) -> Tuple[Tuple[str, str], ...]:
    """((name, value), ...) from {name: value} or ["NAME=VALUE", "NAME"] (a bare NAME is 1, as with -D)."""
    if not defines:
        return ()
    items = []
    if isinstance(defines, Mapping):
        pairs = [(str(k), v) for k, v in defines.items()]
    elif isinstance(defines, (list, tuple)):
        pairs = []
        for d in defines:
            if not isinstance(d, str):
                raise TypeError(f"defines: give 'NAME=VALUE' strings or a dict, got {d!r}")
            name, sep, value = d.partition("=")
            pairs.append((name, value if sep else "1"))
    else:
        raise TypeError(f"defines must be a dict or a list of 'NAME=VALUE' strings, got {type(defines).__name__}")
    for name, value in pairs:
        if not name.isidentifier():
            raise ValueError(f"defines: {name!r} is not a macro name")
        if isinstance(value, bool):
            value = int(value)
        items.append((name, str(value)))
    return tuple(items)


def parse_constant_value(text: str):
    """A command-line value: true/false, an integer (0x.. too) or a float."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(low, 0)
    except ValueError:
        pass
    try:
        return float(low)
    except ValueError:
        raise ValueError(f"{text!r} is not true/false, an integer or a number") from None


def _find(key, decls: List[FunctionConstant], path: str) -> FunctionConstant:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        found = [d for d in decls if d.index == int(key)]
    elif isinstance(key, str):
        found = [d for d in decls if d.name == key] or ([d for d in decls if d.index == int(key)]
                                                         if key.strip().isdigit() else [])
    else:
        raise TypeError(f"constants: keys are names or indices, got {key!r}")
    if not found:
        declared = ", ".join(f"{d.name} [[function_constant({d.index})]] ({d.type})" for d in decls) or "none"
        raise ValueError(f"constants: {key!r} is not a function constant of {path} (it declares: {declared})")
    return found[0]


def _typed(value, d: FunctionConstant) -> np.ndarray:
    arr = np.asarray(value)
    want = (d.components,) if d.components > 1 else ()
    if arr.shape != want and not (d.components == 1 and arr.shape == (1,)):
        raise ValueError(f"constants[{d.name!r}]: {d.type} takes {d.components} value(s), got {value!r}")
    if d.scalar == "bool":
        if arr.dtype != np.bool_ and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"constants[{d.name!r}]: {d.type} takes true/false (or 0/1), got {value!r}")
        return arr.astype(np.bool_).reshape(want)
    t = _np_type(d.scalar)
    if np.issubdtype(np.dtype(t), np.integer):
        if arr.dtype.kind not in "biu" and not (arr == np.round(arr)).all():
            raise ValueError(f"constants[{d.name!r}]: {d.type} takes integers, got {value!r}")
        info = np.iinfo(t)
        if (np.asarray(arr, dtype=object) < info.min).any() or (np.asarray(arr, dtype=object) > info.max).any():
            raise ValueError(f"constants[{d.name!r}]: {value!r} is out of range for {d.type} "
                             f"[{info.min}, {info.max}]")
    return arr.astype(t).reshape(want)


def pack_constants(constants: Optional[Mapping[object, object]], decls: List[FunctionConstant],
                   path: str) -> List[Tuple[int, str, int, bytes]]:
    """[(index, name, MTLDataType, value bytes)] for the runtime; keys are names, indices, or index strings."""
    out = []
    seen = set()
    for key, value in (constants or {}).items():
        d = _find(key, decls, path)
        if d.slot in seen:
            raise ValueError(f"constants: {d.name} (index {d.index}) is given twice")
        seen.add(d.slot)
        out.append((d.index, d.name, d.mtl_type, _typed(value, d).tobytes()))
    return out
