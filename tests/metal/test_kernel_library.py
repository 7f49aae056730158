"""The kernel library the package ships is kernels/*.metal, all of them and nothing else (issue 18 item 5): every
file there is built (kernels/meson.build: the metallib on macOS, the simulator's translated kernels everywhere), and
demo kernels live in examples/, which nothing builds or installs."""
from __future__ import annotations

import re
from pathlib import Path

from _paths import ROOT  # noqa: E402


def _listed_kernel_files() -> set:
    text = re.sub(r"#.*", "", (ROOT / "kernels" / "meson.build").read_text())
    return set(re.findall(r"'([\w.]+\.metal)'", text))


def test_every_kernel_file_is_built_and_only_those():
    on_disk = {p.name for p in (ROOT / "kernels").glob("*.metal")}
    assert on_disk and _listed_kernel_files() == on_disk


def test_examples_are_not_part_of_the_library():
    examples = {p.name for p in (ROOT / "examples").glob("*.metal")}
    assert "example_reduce.metal" in examples
    assert not examples & _listed_kernel_files()
    builds = [ROOT / "meson.build"] + [b for d in ("csrc", "kernels", "objc", "flash_attn_cy")
                                       for b in (ROOT / d).rglob("meson.build")]
    for build in builds:
        assert "examples" not in re.sub(r"#.*", "", build.read_text()), build
