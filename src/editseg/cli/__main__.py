"""``python -m editseg.cli ...`` (also under torchrun / accelerate launch)."""

import sys

from .main import main

sys.exit(main())
