"""`python -m tracker` is the `tracker` command (with no subcommand: the MCP stdio server, once it exists)."""

import sys

from .cli import main

sys.exit(main())
