"""Where things are in the checkout, for tests that read files beside the installed package: the repository root,
this tests/ directory and the fixture folders that live in it. The one place that knows the tests/ layout
(tests/README.md), so that moving a folder is one edit here."""
from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent  # tests/: conftest.py and the shared helper modules (_*.py)
ROOT = TESTS.parent  # the repository root (README.md, pyproject.toml, csrc/, kernels/, objc/, .ci/)
OBJC_TESTS = TESTS / "objc"  # the Objective-C++ shim's tests and their C++/Objective-C++ drivers
OBJC_STUBS = OBJC_TESTS / "objc_stubs"  # declaration-only Foundation/Metal headers and the mock Metal
SIM_CASES = TESTS / "sim" / "sim_cases"  # planted-bug and feature kernels for the simulator's own tests
