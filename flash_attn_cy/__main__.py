"""``python -m flash_attn_cy ...``: see flash_attn_cy/cli.py."""
import sys

from .cli import main

sys.exit(main())
