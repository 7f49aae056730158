"""Explicit opt-in that makes ``import flash_attn`` load flash_attn_cy's compatibility package.

How it works: a ``sys.meta_path`` finder answers only for the top-level name ``flash_attn`` and returns a spec
that loads ``flash_attn_compat/__init__.py`` under that name with the compat directory as its ``__path__``.
Submodules (``flash_attn.flash_attn_interface``, ``flash_attn.bert_padding``, ``flash_attn.layers.rotary``) are
then found by Python's ordinary path finder inside that directory, so they are real modules named ``flash_attn.*``.

Never shadowing a real flash_attn:
- ``install_as_flash_attn()`` first asks every other finder for ``flash_attn``. If one answers (a real package is
  installed) or a non-flash_attn_cy ``flash_attn`` is already imported, it warns with
  :class:`FlashAttnShadowWarning`, leaves everything as it is and returns ``False``.
- Without ``force`` the finder is appended at the END of ``sys.meta_path``: any finder that can load a real
  flash_attn answers first. ``force=True`` puts it first and drops already-imported ``flash_attn*`` modules.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import re
import sys
import warnings
from typing import Iterator, Optional, Sequence

#: flash_attn release whose Python API (names, signatures, defaults, return values) the compat modules reproduce.
FLASH_ATTN_API_LEVEL = "2.8.3"

ALIAS_NAME = "flash_attn"
COMPAT_DIR = os.path.dirname(os.path.abspath(__file__))

#: Attribute set on every finder that serves the alias (also on the lazy one installed by the .pth hook), so the
#: different finder classes recognise each other without importing each other.
FINDER_MARKER = "flash_attn_cy_alias"


from flash_attn_cy.errors import FlashAttnShadowWarning  # noqa: E402  (declared in flash_attn_cy/errors.py)


def flash_attn_cy_version() -> str:
    """Version of the flash_attn_cy package (from the package, else from the installed metadata)."""
    pkg = sys.modules.get("flash_attn_cy")
    version = getattr(pkg, "__version__", None)
    if version:
        return str(version)
    try:
        from importlib.metadata import version as dist_version

        return dist_version("flash_attn_cy")
    except Exception:  # not installed as a distribution (e.g. running from a source tree)
        return "unknown"


def alias_spec() -> importlib.machinery.ModuleSpec:
    """Spec that loads the compat package under the name ``flash_attn``."""
    spec = importlib.util.spec_from_file_location(
        ALIAS_NAME, os.path.join(COMPAT_DIR, "__init__.py"), submodule_search_locations=[COMPAT_DIR]
    )
    assert spec is not None  # the file ships with the package
    return spec


def alias_version() -> str:
    """The version the alias's distribution metadata gives: flash_attn's API level, with flash_attn_cy and its
    version as the PEP 440 local label (``2.8.3+flash.attn.cy.0.1.0`` once normalised), so a version check such as
    diffusers' ``>= 2.6.3`` compares the API level while the string still says what runs."""
    cy = re.sub(r"[^0-9A-Za-z.]+", ".", flash_attn_cy_version()).strip(".")
    return f"{FLASH_ATTN_API_LEVEL}+flash_attn_cy" + (f".{cy}" if cy and cy != "unknown" else "")


class FlashAttnCyDistribution(importlib.metadata.Distribution):
    """Distribution metadata for the alias: ``importlib.metadata.version("flash_attn")`` answers with
    :func:`alias_version` while the alias is installed and no real flash_attn distribution exists (packages such as
    diffusers gate their flash backends on it). Nothing is written to disk: a real installation is never touched."""

    def read_text(self, filename: str) -> Optional[str]:
        if filename == "METADATA":
            return (f"Metadata-Version: 2.1\nName: {ALIAS_NAME}\nVersion: {alias_version()}\n"
                    "Summary: flash_attn_cy serving the flash_attn API (install_as_flash_attn); not Dao-AILab's "
                    "flash-attn\n")
        if filename == "top_level.txt":
            return ALIAS_NAME + "\n"
        return None

    def locate_file(self, path: object) -> "os.PathLike[str]":
        import pathlib

        return pathlib.Path(COMPAT_DIR) / str(path)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _other_finders_answer(method: str, *args: object) -> Iterator[object]:
    """finder.method(*args) of every meta-path finder but flash_attn_cy's that has `method`, in order; a finder that
    raises is skipped (a broken third-party finder must not break our lookups)."""
    for finder in sys.meta_path:
        if _is_our_finder(finder):
            continue
        call = getattr(finder, method, None)
        if call is None:
            continue
        try:
            answer = call(*args)
        except Exception:
            continue
        yield answer


def _real_distribution_exists() -> bool:
    """Whether some finder other than ours has distribution metadata for flash_attn (a real installation)."""
    context = importlib.metadata.DistributionFinder.Context(name=ALIAS_NAME)
    for dists in _other_finders_answer("find_distributions", context):
        try:
            if any(True for _ in dists):
                return True
        except Exception:  # a broken third-party finder must not break metadata lookups
            continue
    return False


def alias_distributions(context: object) -> list:
    """What our finders answer to ``importlib.metadata``: the alias's metadata for the name flash_attn (or an
    enumeration of all distributions), unless a real flash_attn distribution or package is present."""
    name = getattr(context, "name", None)
    if name is not None and _normalise(name) != ALIAS_NAME:
        return []
    if _real_distribution_exists() or find_real_flash_attn() is not None:
        return []
    return [FlashAttnCyDistribution()]


class FlashAttnAliasFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder serving ``flash_attn`` from flash_attn_cy's compat package (top-level name only), and its
    distribution metadata (see :class:`FlashAttnCyDistribution`)."""

    flash_attn_cy_alias = True

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]] = None, target: object = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != ALIAS_NAME:
            return None
        return alias_spec()

    def find_distributions(self, context: object = None) -> list:
        return alias_distributions(context if context is not None else importlib.metadata.DistributionFinder.Context())

    def __repr__(self) -> str:
        return f"<FlashAttnAliasFinder serving {ALIAS_NAME!r} from {COMPAT_DIR}>"


def _is_our_finder(finder: object) -> bool:
    return bool(getattr(finder, FINDER_MARKER, False))


def is_flash_attn_cy_module(module: object) -> bool:
    """True if ``module`` is one of flash_attn_cy's compat modules (loaded as ``flash_attn`` or ``flash_attn.*``)."""
    if getattr(module, "__flash_attn_cy_version__", None) is not None:
        return True
    return _is_compat_path(getattr(module, "__file__", None))


def _is_compat_path(path: Optional[str]) -> bool:
    return bool(path) and os.path.abspath(path).startswith(COMPAT_DIR + os.sep)


def find_real_flash_attn() -> Optional[importlib.machinery.ModuleSpec]:
    """Spec of a ``flash_attn`` that is NOT ours (asking every finder but flash_attn_cy's), or None."""
    for spec in _other_finders_answer("find_spec", ALIAS_NAME, None):
        if spec is not None and not _is_compat_path(spec.origin):
            return spec
    return None


def _alias_modules() -> list:
    return [name for name in sys.modules if name == ALIAS_NAME or name.startswith(ALIAS_NAME + ".")]


def is_installed() -> bool:
    """True if ``import flash_attn`` currently resolves to flash_attn_cy (a finder is installed or it is loaded)."""
    loaded = sys.modules.get(ALIAS_NAME)
    if loaded is not None:
        return is_flash_attn_cy_module(loaded)
    return any(_is_our_finder(f) for f in sys.meta_path)


def install_as_flash_attn(force: bool = False) -> bool:
    """Make ``import flash_attn`` (and its submodules) resolve to flash_attn_cy. Explicit opt-in.

    Args:
        force: also take the name when a real flash_attn is installed or already imported: the alias finder goes
            first on ``sys.meta_path`` and imported ``flash_attn*`` modules are dropped from ``sys.modules``
            (objects already bound elsewhere keep pointing at the real package).

    Returns:
        True if ``flash_attn`` now resolves to flash_attn_cy; False if a real flash_attn was found and left in place
        (a :class:`FlashAttnShadowWarning` says so). Calling it again is harmless.
    """
    loaded = sys.modules.get(ALIAS_NAME)
    real_loaded = loaded is not None and not is_flash_attn_cy_module(loaded)
    if not force:
        if real_loaded:
            warnings.warn(
                f"flash_attn is already imported from {getattr(loaded, '__file__', '?')}; flash_attn_cy did not "
                "replace it. Call install_as_flash_attn(force=True) before anything imports flash_attn to use "
                "flash_attn_cy instead.",
                FlashAttnShadowWarning,
                stacklevel=2,
            )
            return False
        if is_installed():
            return True
        real = find_real_flash_attn()
        if real is not None:
            warnings.warn(
                f"a real flash_attn is installed ({real.origin}); flash_attn_cy will not shadow it and "
                "`import flash_attn` keeps loading it. Pass force=True to use flash_attn_cy under that name anyway.",
                FlashAttnShadowWarning,
                stacklevel=2,
            )
            return False
        sys.meta_path.append(FlashAttnAliasFinder())
        return True

    # force: ours first, and forget whatever flash_attn was imported so the next import loads ours.
    sys.meta_path[:] = [f for f in sys.meta_path if not _is_our_finder(f)]
    sys.meta_path.insert(0, FlashAttnAliasFinder())
    for name in _alias_modules():
        if not is_flash_attn_cy_module(sys.modules[name]):
            del sys.modules[name]
    return True


def uninstall_flash_attn_alias() -> None:
    """Undo :func:`install_as_flash_attn`: remove the finder(s) and forget imported alias modules."""
    sys.meta_path[:] = [f for f in sys.meta_path if not _is_our_finder(f)]
    for name in _alias_modules():
        if is_flash_attn_cy_module(sys.modules[name]):
            del sys.modules[name]
