"""What the machine and this build are: CPU model and ISA features, cores, memory, Apple GPU, package versions.

Used by ``python -m flash_attn_cy info`` and printed at the top of ``bench`` so that every published number says
where it was measured. Every probe is best-effort: a missing file or tool gives "unknown", never an exception.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Dict, List, Optional

# ISA features that matter to attention kernels (x86 /proc/cpuinfo flag names, Arm Features names)
_X86_FEATURES = ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                 "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8"]
_ARM_FEATURES = ["asimd", "fphp", "asimdhp", "asimddp", "bf16", "i8mm", "sve", "sve2", "sme"]
# macOS reports Arm features as sysctl hw.optional.arm.FEAT_*
_MAC_FEATURES = ["FEAT_FP16", "FEAT_DotProd", "FEAT_BF16", "FEAT_I8MM", "FEAT_SME", "FEAT_SME2"]


def _run(cmd: List[str], timeout: float = 10.0) -> Optional[str]:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _sysctl(name: str) -> Optional[str]:
    return _run(["sysctl", "-n", name], timeout=5.0)


def _cpuinfo() -> Dict[str, str]:
    fields: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if ":" in line:
                    key, _, val = line.partition(":")
                    fields.setdefault(key.strip(), val.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    if sys.platform == "darwin":
        return _sysctl("machdep.cpu.brand_string") or platform.processor() or "unknown"
    info = _cpuinfo()
    name = info.get("model name") or info.get("Model") or info.get("Hardware") or platform.processor() or "unknown"
    if "cpu family" in info and "model" in info:
        # x86: virtual machines often report a bare "AMD EPYC"; family/model tell the generation (25/17: Zen 4)
        name += f" (family {info['cpu family']}, model {info['model']})"
    return name


def cpu_features() -> List[str]:
    """The attention-relevant ISA extensions this CPU reports."""
    if sys.platform == "darwin":
        have = []
        for feat in _MAC_FEATURES:
            if _sysctl(f"hw.optional.arm.{feat}") == "1":
                have.append(feat)
        return have
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    wanted = _X86_FEATURES if "flags" in info else _ARM_FEATURES
    return [f for f in wanted if f in flags]


def cpu_cores() -> Dict[str, int]:
    logical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    out = {"logical": logical, "usable": usable}
    if sys.platform == "darwin":
        for key, name in (("performance", "hw.perflevel0.physicalcpu"), ("efficiency", "hw.perflevel1.physicalcpu")):
            v = _sysctl(name)
            if v and v.isdigit():
                out[key] = int(v)
    return out


def memory_bytes() -> Optional[int]:
    if sys.platform == "darwin":
        v = _sysctl("hw.memsize")
        return int(v) if v and v.isdigit() else None
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def apple_gpu() -> Optional[str]:
    """The GPU name and core count on a Mac (system_profiler), None elsewhere."""
    if sys.platform != "darwin":
        return None
    out = _run(["system_profiler", "SPDisplaysDataType"], timeout=15.0)
    if not out:
        return "unknown (system_profiler unavailable)"
    name, cores, metal = None, None, None
    for line in out.splitlines():
        s = line.strip()
        if s.startswith("Chipset Model:"):
            name = s.split(":", 1)[1].strip()
        elif s.startswith("Total Number of Cores:"):
            cores = s.split(":", 1)[1].strip()
        elif s.startswith("Metal Support:") or s.startswith("Metal Family:"):
            metal = s.split(":", 1)[1].strip()
    parts = [name or "unknown GPU"]
    if cores:
        parts.append(f"{cores} cores")
    if metal:
        parts.append(metal)
    return ", ".join(parts)


def package_versions() -> Dict[str, Optional[str]]:
    """Versions of Python, NumPy and the optional packages flash_attn_cy works with (None when not installed).

    Read from the installed distributions' metadata, without importing them (importing torch or transformers
    takes seconds)."""
    from importlib import metadata

    vers: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for dist in ("numpy", "torch", "ml_dtypes", "matplotlib", "transformers"):
        try:
            vers[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            vers[dist] = None
    return vers


def cpu_kernel_path() -> str:
    """The CPU backend's kernel path in use: "amx", "amx-emulated", "avx512-bf16", "avx512", "avx2", "neon" or "portable"
    ("unknown" if the extension
    cannot say). It is the first word of the ISA part of the backend's description (csrc/cpu/isa_dispatch.cpp);
    FLASH_ATTN_CY_CPU_ISA is honoured, as by the kernels themselves."""
    import re

    try:
        from . import _core
        text = _core.backend_describe("cpu")
    except Exception:  # noqa: BLE001 - best effort, as every probe here
        return "unknown"
    m = re.search(r"FlashAttention-2, ([a-z0-9-]+)", text)
    return m.group(1) if m else "unknown"


def hardware_summary() -> Dict[str, object]:
    mem = memory_bytes()
    summary: Dict[str, object] = {
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cores": cpu_cores(),
        "memory_gib": round(mem / 2 ** 30, 1) if mem else None,
    }
    gpu = apple_gpu()
    if gpu is not None:
        summary["gpu"] = gpu
    return summary


def backend_status() -> Dict[str, Dict[str, object]]:
    """flash_attn_cy.backends() normalised to {name: {"available": bool, "reason": str, ...}}.

    Accepts the shapes backends() may take ({name: bool}, {name: dict}, {name: str reason}, a list of names or of
    records with .name/.available/.reason); falls back to the extension's backend_available() per known backend.
    """
    import flash_attn_cy

    fn = getattr(flash_attn_cy, "backends", None)
    recs: Dict[str, Dict[str, object]] = {}
    if fn is None:
        core = getattr(flash_attn_cy, "_core", None)
        probe = getattr(core, "backend_available", None)
        if probe is None:
            return recs
        for name in ("cpu", "sim", "metal"):
            ok, why = probe(name)
            recs[name] = {"available": bool(ok), "reason": str(why or "")}
        return recs
    info = fn()
    items = info.items() if isinstance(info, dict) else ((getattr(x, "name", x), x) for x in info)
    for name, val in items:
        if isinstance(val, bool):
            recs[str(name)] = {"available": val, "reason": ""}
        elif isinstance(val, dict):
            rec = dict(val)
            rec["available"] = bool(val.get("available", True))
            rec["reason"] = str(val.get("reason", "") or "")
            recs[str(name)] = rec
        elif isinstance(val, str):
            # either the bare name (list of names) or a reason string for an unavailable backend
            recs[str(name)] = {"available": val == name, "reason": "" if val == name else val}
        elif isinstance(val, (tuple, list)) and len(val) == 2:
            recs[str(name)] = {"available": bool(val[0]), "reason": str(val[1] or "")}
        else:
            recs[str(name)] = {"available": bool(getattr(val, "available", True)),
                               "reason": str(getattr(val, "reason", "") or "")}
    return recs


def available_backends() -> List[str]:
    return [n for n, r in backend_status().items() if r.get("available")]
