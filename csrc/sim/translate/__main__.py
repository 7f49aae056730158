"""`python csrc/sim/translate/__main__.py ...` (the build) or `python -m flash_attn_cy.sim.translate ...`: see cli.py."""

import os
import sys

if __package__:
    from .cli import main
else:  # run as a file by the build: import this directory as the package `translate`
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # not this directory: its modules
    # (errors.py, model.py, ...) are the package's, never top-level ones
    from translate.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
