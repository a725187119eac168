"""Git on the host, and what it must never read: the bottle's own checkout (worktree mode), the settle of
what an agent wrote where the operator's git looks (mount mode, and copies that come home), and the one
rule for what git takes for a repository (shape)."""
