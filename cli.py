#!/usr/bin/env python3
"""Repository entry point: ./cli.py VERB ... (same as the `claude-bottle` console script)."""

import sys

from claude_bottle.cli import main

if __name__ == "__main__":
    sys.exit(main())
