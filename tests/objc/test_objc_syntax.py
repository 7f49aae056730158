"""Compile-check the Objective-C++ Metal shim (objc/*.mm) without a Mac.

Every .mm file is compiled with clang in syntax-only mode, ARC on, against the declaration-only Metal and
Foundation headers in tests/objc/objc_stubs (written from Apple's documented API), and any warning fails the test. The
negative cases prove the check has teeth: a misspelled selector, a wrong argument type and non-ARC code must fail.
Skips (with the reason) when no clang with Objective-C support is installed (Debian/Ubuntu: apt package clang-19).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _paths import OBJC_STUBS, ROOT  # noqa: E402
# This file compiles the shim against the declaration-only Linux stub headers of tests/objc/objc_stubs; on macOS the
# real SDK headers clash with those stubs, and the shim is compiled and run for real there (the macOS workflows).
pytestmark = pytest.mark.skipif(sys.platform == "darwin", reason="compiles the Metal shim against Linux stub headers; "
                                "macOS builds the real shim instead")
STUBS = OBJC_STUBS
MM_FILES = sorted((ROOT / "objc").glob("*.mm"))


def _find_clang() -> str | None:
    for name in (os.environ.get("FA_OBJC_CLANG"), "clang-19", "clang-20", "clang-18", "clang"):
        if not name or shutil.which(name) is None:
            continue
        probe = subprocess.run([name, "-fsyntax-only", "-x", "objective-c++", "-fobjc-runtime=macosx", "-fobjc-arc",
                                "-"], input="@class Foo;\nint main() { return 0; }\n", capture_output=True, text=True)
        if probe.returncode == 0:
            return name
    return None


CLANG = _find_clang()
needs_clang = pytest.mark.skipif(CLANG is None, reason="no clang with Objective-C++ support found "
                                 "(install the apt package clang-19, or set FA_OBJC_CLANG)")


def _compile(path: Path, std: str = "c++17", arc: bool = True) -> subprocess.CompletedProcess:
    # -fobjc-runtime=macosx: ARC needs the Apple runtime model; clang's Linux default is the legacy GNU runtime.
    cmd = [CLANG, "-fsyntax-only", "-x", "objective-c++", f"-std={std}", "-fobjc-runtime=macosx", "-fblocks",
           "-Werror", "-Wall", "-Wextra", "-Wnullability-completeness", "-Wobjc-method-access",
           f"-I{STUBS}", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'kernels'}", f"-I{ROOT / 'objc'}", str(path)]
    if arc:
        cmd.insert(2, "-fobjc-arc")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _linux_system_includes() -> list:
    """The C and C++ header directories clang uses for this Linux host, to be passed explicitly to a macOS-target
    compile (which would otherwise look for an SDK)."""
    probe = subprocess.run([CLANG, "-E", "-x", "c++", "-std=c++17", "-v", "-"], input="", capture_output=True,
                           text=True)
    dirs, inside = [], False
    for line in probe.stderr.splitlines():
        if line.startswith("#include <...> search starts here"):
            inside = True
        elif line.startswith("End of search list"):
            break
        elif inside:
            dirs.append(line.strip().split(" (")[0])
    return dirs


def _compile_for_macos(path: Path, deployment: str = "11.0") -> subprocess.CompletedProcess:
    """Compile-check for a macOS target with an old deployment target, so that clang's availability analysis runs
    on the API_AVAILABLE annotations of the stubs (an unguarded use of a macOS 13/14 API is a warning, hence an
    error here). The C/C++ library headers are this Linux host's, with the predefined macros of a Linux target, since
    no macOS SDK exists here; only the Objective-C and Metal parts are what this check is about."""
    import platform
    arch = {"x86_64": "x86_64", "AMD64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    includes = _linux_system_includes()
    if arch is None or not includes:
        pytest.skip(f"no macOS-target availability check on this host ({platform.machine()})")
    cmd = [CLANG, "-fsyntax-only", "-x", "objective-c++", "-std=c++17", "-fobjc-arc", "-fblocks", "-Werror", "-Wall",
           "-Wextra", "-target", f"{arch}-apple-macos{deployment}", "-nostdinc", "-nostdinc++"]
    cmd += [f"-isystem{d}" for d in includes]
    cmd += ["-U__APPLE__", "-U__MACH__", "-U__nonnull", "-D__linux__", "-D__linux", "-Dlinux", "-D__gnu_linux__",
            "-D__unix__", "-D__unix", "-D__ELF__", "-D_GNU_SOURCE",
            f"-I{STUBS}", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'kernels'}", f"-I{ROOT / 'objc'}", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_shim_sources_exist() -> None:
    names = {p.name for p in MM_FILES}
    assert {"fa_metal_context.mm", "fa_metal_execute.mm"} <= names, names


@needs_clang
@pytest.mark.parametrize("std", ["c++17", "c++14"])  # c++14: Apple clang's default may be older than ours
@pytest.mark.parametrize("path", MM_FILES, ids=lambda p: p.name)
def test_mm_compiles_without_warnings(path: Path, std: str) -> None:
    result = _compile(path, std)
    assert result.returncode == 0, f"{path.name} ({std}):\n{result.stderr}"
    assert result.stderr.strip() == "", result.stderr


@needs_clang
@pytest.mark.parametrize("path", MM_FILES, ids=lambda p: p.name)
def test_mm_guards_newer_apis_for_old_deployment_targets(path: Path) -> None:
    """A wheel built with MACOSX_DEPLOYMENT_TARGET=11.0 (cibuildwheel's arm64 default) must not use a macOS 13/14 API
    (MTLGPUFamilyMetal3, MTLLanguageVersion3_1, ...) outside an @available check: Apple's clang warns
    (-Wunguarded-availability-new), and the call would misbehave on the older OS."""
    result = _compile_for_macos(path)
    assert result.returncode == 0, f"{path.name}:\n{result.stderr}"


@needs_clang
def test_availability_check_has_teeth(tmp_path: Path) -> None:
    src = tmp_path / "unguarded.mm"
    src.write_text("#import <Foundation/Foundation.h>\n#import <Metal/Metal.h>\n"
                   "void f(MTLCompileOptions *o) { o.languageVersion = MTLLanguageVersion3_1; }\n")
    result = _compile_for_macos(src)
    assert result.returncode != 0 and "only available on macOS 14.0 or newer" in result.stderr, result.stderr
    src.write_text("#import <Foundation/Foundation.h>\n#import <Metal/Metal.h>\n"
                   "void f(MTLCompileOptions *o) { if (@available(macOS 14.0, *)) o.languageVersion = "
                   "MTLLanguageVersion3_1; }\n")
    result = _compile_for_macos(src)
    assert result.returncode == 0, result.stderr


_PRELUDE = "#import <Foundation/Foundation.h>\n#import <Metal/Metal.h>\n"

_BAD_SNIPPETS = {
    # A selector that does not exist on the protocol (typo of newBufferWithBytesNoCopy:...).
    "misspelled selector": "void f(id<MTLDevice> d, void *p) { (void)[d newBufferWithBytesNoCopy:p length:16384 "
                           "options:MTLResourceStorageModeShared dealocator:nil]; }",
    # Wrong argument type: an NSString where an id<MTLFunction> is expected.
    "wrong argument type": "void f(id<MTLDevice> d, NSString *s) { NSError *e = nil; "
                           "(void)[d newComputePipelineStateWithFunction:s error:&e]; }",
    # nil passed to a nonnull parameter.
    "nil to nonnull": "void f(id<MTLComputeCommandEncoder> e) { [e setBytes:nil length:4 atIndex:0]; }",
    # Missing required argument label (setBuffer:atIndex: does not exist, setBuffer:offset:atIndex: does).
    "wrong selector shape": "void f(id<MTLComputeCommandEncoder> e, id<MTLBuffer> b) { [e setBuffer:b atIndex:0]; }",
}


@needs_clang
@pytest.mark.parametrize("name", sorted(_BAD_SNIPPETS))
def test_check_rejects_bad_code(tmp_path: Path, name: str) -> None:
    src = tmp_path / "bad.mm"
    src.write_text(_PRELUDE + _BAD_SNIPPETS[name] + "\n")
    assert _compile(src).returncode != 0, f"the syntax check accepted code with a {name}"


@needs_clang
def test_shim_refuses_non_arc_build(tmp_path: Path) -> None:
    result = _compile(ROOT / "objc" / "fa_metal_execute.mm", arc=False)
    assert result.returncode != 0 and "fobjc-arc" in result.stderr


@needs_clang
def test_good_snippet_passes(tmp_path: Path) -> None:
    # The positive control for the negative cases above: the same calls spelled correctly compile cleanly.
    src = tmp_path / "good.mm"
    src.write_text(_PRELUDE + "void f(id<MTLComputeCommandEncoder> e, id<MTLBuffer> b, const int *c) {\n"
                   "  [e setBuffer:b offset:16 atIndex:0]; [e setBytes:c length:4 atIndex:1];\n"
                   "  [e dispatchThreadgroups:MTLSizeMake(1, 2, 3) threadsPerThreadgroup:MTLSizeMake(32, 1, 1)]; }\n")
    result = _compile(src)
    assert result.returncode == 0, result.stderr


def _declared_names(header: str) -> set:
    """Selector pieces, property names, enumerators and C functions declared in a stub header."""
    import re
    text = re.sub(r"//[^\n]*", "", header)
    names = set()
    for decl in re.findall(r"^[-+]\s*\([^)]*\)\s*([^;]+);", text, flags=re.M):  # methods
        pieces = re.findall(r"(\w+)\s*:", decl) or [decl.split()[0]]
        names.add(":".join(pieces) + (":" if ":" in decl else ""))
    names |= set(re.findall(r"^@property\s*(?:\([^)]*\))?[^;]*?\b(\w+)\s*(?:NS_\w+)?;", text, flags=re.M))
    enumerator = r"^\s+(MTL\w+)\s*(?:API_AVAILABLE\(\w+\([\d.]+\)\)\s*)?="  # name [API_AVAILABLE(...)] =
    names |= set(re.findall(enumerator, text, flags=re.M))
    names |= set(re.findall(r'^extern "C" [^(]*?\b(\w+)\(', text, flags=re.M))
    return names


def test_stubs_declare_only_what_the_shim_uses() -> None:
    import re
    shim = "\n".join(p.read_text() for p in sorted((ROOT / "objc").glob("*.mm")))
    # Kept although unused: complete status enum (the shim prints the status number), both dispatch types, the
    # protocol requirement of NSCopying, and the -init/-alloc/+new every class has.
    allowed = {"copyWithZone:", "alloc", "new", "init", "MTLCommandBufferStatusNotEnqueued",
               "MTLCommandBufferStatusEnqueued", "MTLCommandBufferStatusCommitted", "MTLCommandBufferStatusScheduled",
               "MTLCommandBufferStatusError", "MTLDispatchTypeConcurrent"}
    unused = []
    for header in (STUBS / "Metal" / "Metal.h", STUBS / "Foundation" / "Foundation.h"):
        for name in sorted(_declared_names(header.read_text())):
            first = name.split(":")[0]
            if name in allowed or re.search(rf"\b{re.escape(first)}\b", shim):
                continue
            unused.append(f"{header.parent.name}/{header.name}: {name}")
    assert not unused, "declared in the stubs but not used by objc/*.mm: " + ", ".join(unused)


def _macos_sdk() -> str | None:
    import sys
    if sys.platform != "darwin" or shutil.which("xcrun") is None:
        return None
    sdk = subprocess.run(["xcrun", "--sdk", "macosx", "--show-sdk-path"], capture_output=True, text=True)
    return sdk.stdout.strip() if sdk.returncode == 0 and sdk.stdout.strip() else None


@pytest.mark.skipif(_macos_sdk() is None, reason="needs macOS with the SDK (xcrun): checks the stubs' fidelity")
@pytest.mark.parametrize("path", MM_FILES, ids=lambda p: p.name)
def test_mm_compiles_against_the_real_sdk(path: Path) -> None:
    """On a Mac the same files must compile warning-free against Apple's real headers: a selector or type that the
    stubs got wrong would pass the Linux check and fail here."""
    # An old deployment target, so that the SDK's availability annotations are checked as in a wheel build.
    cmd = ["xcrun", "clang", "-fsyntax-only", "-x", "objective-c++", "-std=c++17", "-fobjc-arc", "-fblocks",
           "-Werror", "-Wall", "-Wextra", "-mmacosx-version-min=11.0", "-isysroot", _macos_sdk(),
           f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'kernels'}", f"-I{ROOT / 'objc'}", str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
