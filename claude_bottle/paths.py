"""Host paths a manifest names, checked against the workspace (which the agent can write)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ManifestError

__all__ = ["outside_workspace"]


def outside_workspace(path: Path, workspace: Path, what: str) -> Path:
    """A host path the manifest names (mount source, CA bundle, credential file), checked not to lie in
    the workspace: the agent writes there, so it could swap the file, or a symlink under it, between
    runs (and it can read a credential file there directly). Returns the resolved path."""
    resolved = path.resolve()
    ws = workspace.resolve()
    for candidate in (Path(os.path.abspath(path)), resolved):  # noqa: PTH100 - lexical on purpose: no symlinks followed
        if candidate == ws or ws in candidate.parents:
            raise ManifestError(
                f"{what} {path} is inside the workspace {ws}, which the agent can change and "
                "read: move it outside the workspace"
            )
    return resolved
