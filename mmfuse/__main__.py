"""``python -m mmfuse`` runs the CLI."""

import sys

from mmfuse.cli import main

sys.exit(main())
