"""python -m claude_bottle: the same CLI as `claude-bottle`."""

import sys

from claude_bottle.cli import main

sys.exit(main())
