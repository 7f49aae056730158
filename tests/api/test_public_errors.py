"""Every exception a user may catch is importable from the top level, declared once (flash_attn_cy/errors.py) and
listed in the README's table; the places that raise them raise those very classes."""
from __future__ import annotations

import ast
import pathlib
import re

import numpy as np
import pytest
from _paths import ROOT

import flash_attn_cy
from flash_attn_cy import errors

PKG = pathlib.Path(errors.__file__).resolve().parent
README = ROOT / "README.md"  # the checkout's (the package may be installed)
# Exceptions that never leave their module: the verify driver's "n/a" marker and the sim CLI's argument error
# (both caught where they are raised and turned into a table entry or an exit status).
INTERNAL = {"NotApplicable", "UsageError"}
# The build runs the translator (csrc/sim/translate, installed as sim/translate) as a script, outside the package,
# where it declares a stand-in of the same name (inside the package it is errors.TranslateError:
# test_raisers_raise_the_top_level_classes).
SCRIPT_STAND_INS = {("sim/translate/errors.py", "TranslateError")}


def test_every_public_exception_is_importable_from_the_top_level():
    assert errors.__all__, "errors.py declares no exceptions"
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, (Exception, Warning))
        assert getattr(flash_attn_cy, name) is cls, name
        assert name in flash_attn_cy.__all__, name
        assert cls.__doc__ and len(cls.__doc__) > 40, f"{name} has no docstring saying when it is raised"


def _exception_classes_defined_in(path: pathlib.Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(b) for b in node.bases]
            if any(re.search(r"(Error|Exception|Warning)$", b) for b in bases):
                yield node.name


def test_exceptions_are_declared_only_in_errors_py():
    """One place: a new exception class anywhere else in the package fails here until it moves to errors.py."""
    elsewhere = {}
    for path in PKG.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PKG:
            continue
        for name in _exception_classes_defined_in(path):
            if name not in INTERNAL and (str(path.relative_to(PKG)), name) not in SCRIPT_STAND_INS:
                elsewhere[name] = str(path.relative_to(PKG))
    assert not elsewhere, f"exception classes outside flash_attn_cy/errors.py: {elsewhere}"
    declared = set(_exception_classes_defined_in(PKG / "errors.py"))
    assert declared == set(errors.__all__)


def test_readme_table_lists_every_exception():
    text = README.read_text(encoding="utf-8")
    for name in errors.__all__:
        assert re.search(rf"^\| `(flash_attn_cy\.)?{name}` \|", text, flags=re.M), f"README has no row for {name}"


def test_raisers_raise_the_top_level_classes():
    from flash_attn_cy import sim
    from flash_attn_cy.flash_attn_compat import _alias, flash_attn_interface
    import importlib

    translate = importlib.import_module("flash_attn_cy.sim.translate")  # sim re-exports a function of that name

    assert sim.SimCompileError is flash_attn_cy.SimCompileError
    assert translate.TranslateError is flash_attn_cy.TranslateError
    assert _alias.FlashAttnShadowWarning is flash_attn_cy.FlashAttnShadowWarning
    assert flash_attn_interface.FlashAttnValueError is flash_attn_cy.FlashAttnValueError

    q = np.zeros((1, 4, 2, 8), np.float32)
    if not flash_attn_cy.backends()["metal"]["available"]:
        with pytest.raises(flash_attn_cy.BackendUnavailableError, match="backend: 'metal'"):
            flash_attn_cy.flash_attn_func(q, q, q, backend="metal")
    with pytest.raises(flash_attn_cy.FlashAttnValueError, match="window_size"):
        flash_attn_interface.flash_attn_func(q, q, q, window_size=(-5, 0))
    with pytest.raises(flash_attn_cy.TranslateError):
        translate.translate("vertex float4 v() { return 0; }")
