"""`python -m plugin ...` from the repository root runs the engine's command line."""

import gc
import sys

from .core.cli import main

code = main()
# Every result is written and the index closed by now. Freezing the heap spares the interpreter's
# final garbage collections over the models' object graph (~4 s of a Ctrl-C's exit on a busy
# machine, ~1 s with this); objects are still released by reference counting as modules unload.
gc.freeze()
sys.exit(code)
