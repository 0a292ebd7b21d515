"""`python -m ota` is `edge-ota` (tests use it so no install is needed)."""

import sys

from ota.cli import main

sys.exit(main())
