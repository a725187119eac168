"""What removing a bottle's state dir would lose of its work, whatever its mode: a worktree bottle's commits
and changes not in the operator's branches, a copy-mode bottle's changes not applied, a remote bottle's
workspace that came home (for `cleanup` and `stop --rm` to name before anything goes)."""

from __future__ import annotations

from claude_bottle.bottle.state import StateDir

__all__ = ["work_left"]


def work_left(state: StateDir) -> str | None:
    record = state.read()
    if not record.worktree and (record.manifest.get("agent") or {}).get("workspace_mode") == "copy":
        from claude_bottle.hostfs.copy_mode import pending as copy_pending  # only copy mode pays for the walk

        return copy_pending(state)
    if not record.worktree:
        home = state.home_workspace
        if home.is_dir() and not home.is_symlink():
            return f"the workspace a remote engine sent home (`claude-bottle pull {state.slug} --to DIR` keeps it)"
        return None
    from claude_bottle.git.worktree import pending  # only worktree bottles pay for git

    return pending(state)
