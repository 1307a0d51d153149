"""`python -m tracker` is the `tracker` command; with no subcommand it runs the MCP stdio server (`serve`)."""

import sys

from .cli import main

sys.exit(main(default_command="serve"))
