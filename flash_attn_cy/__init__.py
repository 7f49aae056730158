"""flash_attn_cy: FlashAttention-2 for Apple Silicon (Metal) with a portable C++ backend."""
from . import _core  # noqa: F401

__version__ = "0.1.0"
