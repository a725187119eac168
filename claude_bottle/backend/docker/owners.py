"""What the bottle user owns on this machine, for an operator who is not root.

In worktree and copy modes the agent runs as the bottle user (runtime.bottle_uid), so that git on the host
refuses every repository it makes. Root hands the agent its tree, `~/.claude` and run marks by chown; a
normal user (in the docker group) cannot, and cannot remove what the agent made in them either. Both are
done by a throwaway helper container of the bottle's (the guard image; no network; root with CHOWN,
DAC_OVERRIDE and FOWNER only; the paths bound one by one, none of them a link: they are folders of the
state dir, which only the operator can change).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from claude_bottle import engine
from claude_bottle.backend.docker.remote import _helper

__all__ = ["clear", "hand_over"]


def _mounts(paths: Sequence[Path]) -> tuple[list[str], list[str]]:
    return [f"{p}:/h/{i}" for i, p in enumerate(paths)], [f"/h/{i}" for i in range(len(paths))]


def hand_over(*, slug: str, image: str, labels: dict[str, str], paths: Sequence[Path], uid: int, gid: int) -> None:
    """Every entry under `paths` (and each path itself) owned by uid:gid, no link followed."""
    if not paths:
        return
    mounts, inside = _mounts(paths)
    argv = _helper(slug, image, labels, mounts, ["chown", "-hR", f"{uid}:{gid}", "--", *inside])
    engine.check(engine.docker(*argv, timeout=600), f"handing {slug}'s files to its agent")


def clear(*, slug: str, image: str, labels: dict[str, str], paths: Sequence[Path]) -> None:
    """Everything under `paths` removed (the folders themselves stay, empty, for the operator to remove)."""
    paths = [p for p in paths if p.is_dir() and not p.is_symlink()]
    if not paths:
        return
    mounts, inside = _mounts(paths)
    argv = _helper(slug, image, labels, mounts, ["find", *inside, "-mindepth", "1", "-delete"])
    engine.check(engine.docker(*argv, timeout=600), f"removing the files {slug}'s agent made")
