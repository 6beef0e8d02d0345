"""``python -m captum_sfam.app``: the command line."""

import sys

from .cli import main

sys.exit(main())
