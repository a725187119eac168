"""claude-bottle: run Claude Code agents in sealed bottles."""

__version__ = "0.1.0"
