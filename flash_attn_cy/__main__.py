"""``python -m flash_attn_cy ...``: see flash_attn_cy/cli.py."""
import os
import sys

from .cli import main

try:
    sys.exit(main())
except BrokenPipeError:
    # the reader went away (`python -m flash_attn_cy info | head`): stop quietly, as other command-line tools do
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)
