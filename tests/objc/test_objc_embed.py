"""The macOS build's kernel plumbing, checked on any machine: objc/embed_kernels.py (kernel source embedded for
run-time compilation when Apple's Metal toolchain is absent) and the shape of objc/meson.build."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from _paths import ROOT  # noqa: E402


def _load_embed():
    spec = importlib.util.spec_from_file_location("embed_kernels", ROOT / "objc" / "embed_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


embed = _load_embed()


@pytest.fixture()
def kernel_tree(tmp_path: Path) -> Path:
    k = tmp_path / "kernels"
    (k / "sub").mkdir(parents=True)
    (k / "common.h").write_text('#pragma once\n#include "sub/tiles.h"\nconstant int kCommon = 1;\n')
    (k / "sub" / "tiles.h").write_text("#pragma once\nconstant int kTile = 32;\n")
    (k / "a.metal").write_text('#include <metal_stdlib>\n#include "common.h"\n#include "common.h"\n'
                               'kernel void ka() {}\n')
    (k / "b.metal").write_text('#include "sub/tiles.h"\n#ifndef __METAL_VERSION__\n#include "sim_only.h"\n#endif\n'
                               'kernel void kb() {}\n')
    return k


def test_flatten_inlines_each_header_once(kernel_tree: Path) -> None:
    text = embed.flatten(kernel_tree / "a.metal", [kernel_tree])
    assert text.count("constant int kCommon = 1;") == 1
    assert text.count("constant int kTile = 32;") == 1
    assert "#include <metal_stdlib>" in text  # system headers stay for Metal's compiler
    assert "pragma once" not in text          # would warn in a main file
    assert '#include "' not in text
    # Line markers map compiler errors back to the original files.
    assert '#line 1 "tiles.h"' in text and '#line 3 "a.metal"' in text
    assert text.index("kTile") < text.index("kCommon") < text.index("kernel void ka")


def test_unresolved_include_kept_verbatim(kernel_tree: Path, capsys) -> None:
    text = embed.flatten(kernel_tree / "b.metal", [kernel_tree])
    assert '#include "sim_only.h"' in text
    assert "sim_only.h" in capsys.readouterr().err


def test_generated_cpp_compiles_and_round_trips(kernel_tree: Path, tmp_path: Path) -> None:
    cxx = shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    # Force several raw-string pieces to check that they concatenate back exactly.
    big = "// " + "x" * (3 * embed._CHUNK) + "\nkernel void kc() {}\n"
    (kernel_tree / "c.metal").write_text(big)
    out = tmp_path / "embedded.cpp"
    dep = tmp_path / "embedded.d"
    srcs = [kernel_tree / n for n in ("a.metal", "b.metal", "c.metal")]
    assert embed.main(["--output", str(out), "--depfile", str(dep), "--include-dir", str(kernel_tree),
                       "--metallib-build-path=/b/fa_kernels.metallib", *map(str, srcs)]) == 0
    deps = dep.read_text()
    assert deps.startswith(f"{out}:") and "tiles.h" in deps and "common.h" in deps
    main = tmp_path / "main.cpp"
    main.write_text('#include <cstdio>\n#include "fa_metal_kernel_source.h"\nint main() {\n'
                    '  std::printf("%d|%s\\n", fa_embedded_kernel_file_count, fa_metallib_build_path);\n'
                    '  for (int i = 0; i < fa_embedded_kernel_file_count; ++i)\n'
                    '    std::printf("%s\\n%s\\x1e", fa_embedded_kernel_files[i].name, fa_embedded_kernel_files[i].source);\n'
                    "}\n")
    exe = tmp_path / "embedded"
    built = subprocess.run([cxx, "-std=c++17", "-Wall", "-Werror", f"-I{ROOT / 'objc'}", str(main), str(out),
                            "-o", str(exe)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30).stdout
    header, rest = run.split("\n", 1)
    assert header == "3|/b/fa_kernels.metallib"
    files = [chunk for chunk in rest.split("\x1e") if chunk]
    names = [f.split("\n", 1)[0] for f in files]
    assert names == ["a.metal", "b.metal", "c.metal"]
    assert files[2].split("\n", 1)[1] == embed.flatten(kernel_tree / "c.metal", [kernel_tree])


def test_no_sources_mode(tmp_path: Path, kernel_tree: Path) -> None:
    cpp, deps = embed.generate([kernel_tree / "a.metal"], [kernel_tree], "/x.metallib", embed_sources=False)
    assert "fa_embedded_kernel_file_count = 0;" in cpp and "{nullptr, nullptr}" in cpp and not deps
    assert '"/x.metallib"' in cpp


def test_delimiter_collision_is_an_error() -> None:
    with pytest.raises(ValueError):
        embed._cpp_string(f'x ){embed._DELIM}" y')


def test_objc_meson_build_lists_the_shim() -> None:
    text = (ROOT / "objc" / "meson.build").read_text()
    listed = {p for p in ("fa_metal_binding.cpp", "fa_metal_context.mm", "fa_metal_execute.mm") if f"'{p}'" in text}
    on_disk = {p.name for p in (ROOT / "objc").iterdir() if p.suffix in (".mm", ".cpp")}
    assert listed == on_disk, (listed, on_disk)
    for needle in ("-fobjc-arc", "appleframeworks", "'Metal'", "'Foundation'", "metallib", "embed_kernels.py",
                   "install: true"):
        assert needle in text, needle
    try:
        from mesonbuild import mparser
    except ImportError:
        pytest.skip("meson is not importable: only the textual checks ran")
    mparser.Parser(text, str(ROOT / "objc" / "meson.build")).parse()  # raises on a syntax error


def _load_translator():
    """The simulator's translator (csrc/sim/translate), imported as the package does."""
    try:
        return importlib.import_module("flash_attn_cy.sim.translate")
    except ImportError:
        return None


KERNEL_FILES = sorted((ROOT / "kernels").glob("*.metal"))


@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_embedded_source_is_the_same_program(path: Path) -> None:
    """What a Mac without the Metal toolchain compiles at run time (the flattened file) must define exactly the
    kernels the file itself defines: checked with the simulator's MSL front end on both."""
    text = embed.flatten(path, [ROOT / "kernels"])
    assert '#include "' not in text
    tr = _load_translator()
    if tr is None:
        pytest.skip("simulator translator not in this checkout")
    try:
        original = tr.translate_file(str(path), [str(ROOT / "kernels")])
    except tr.TranslateError as e:
        pytest.skip(f"the simulator cannot translate {path.name} itself yet: {e}")
    if not original.kernels:
        pytest.skip(f"the simulator's translator finds no kernel entry point in {path.name}: nothing to compare")
    flat = tr.translate(text, str(path.parent / ("flattened_" + path.name)), [])
    assert sorted(k.name for k in flat.kernels) == sorted(k.name for k in original.kernels)
