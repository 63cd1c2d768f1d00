"""`python -m plugin ...` from the repository root runs the engine's command line."""

import sys

from .core.cli import main

sys.exit(main())
