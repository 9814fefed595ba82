"""``python -m agent`` is ``scan-agent``."""

import sys

from agent.cli import main

sys.exit(main())
