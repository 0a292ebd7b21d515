"""`python -m edge_agent` is `edge-agent` (tests use it so no install is needed)."""

import sys

from edge_agent.cli import main

sys.exit(main())
