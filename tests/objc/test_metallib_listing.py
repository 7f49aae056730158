"""flash_attn_cy._metallib.library_functions, the wheel check's way to load the shipped metallib: on a build
without the Metal shim it raises the shim's honest 'unavailable' reason (the macOS paths run against the mock Metal
in test_objc_execute.py, scenarios paravirtual/nodevice)."""
from __future__ import annotations

import sys

import pytest

from flash_attn_cy import _metallib, build_info


@pytest.mark.skipif(build_info()["metal shim built"] == "yes", reason="this build has the Metal shim")
def test_without_shim_raises_with_reason() -> None:
    with pytest.raises(RuntimeError, match="cannot be listed: .*(Metal|metal)"):
        _metallib.library_functions()


@pytest.mark.skipif(sys.platform != "darwin" or build_info()["metal shim built"] != "yes",
                    reason="needs a macOS build with the Metal shim")
def test_macos_build_lists_or_says_why() -> None:
    if build_info()["metal kernel library"].startswith("fa_kernels.metallib"):
        try:
            path, names = _metallib.library_functions()
        except RuntimeError as e:  # no Metal device at all (some virtual machines)
            assert "no Metal device" in str(e)
            return
        assert path.endswith("fa_kernels.metallib") and names
    else:
        with pytest.raises(RuntimeError, match="embeds the kernel source"):
            _metallib.library_functions()
