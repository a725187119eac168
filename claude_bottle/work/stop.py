"""Stop, remove, forget: a bottle's containers gone, its state kept or removed; and the check that nothing of it still
runs."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from claude_bottle.backend import (
    BottleBackend,
    get_bottle_backend,
)
from claude_bottle.bottle.state import BottleRecord, StateDir
from claude_bottle.errors import BottleError
from claude_bottle.guard_inputs.files import drop_secrets

if TYPE_CHECKING:
    pass
from claude_bottle.work.common import Notify, say_nothing
from claude_bottle.work.upkeep import after_run


def stop_bottle(
    state: StateDir, *, remove: bool = False, status: str = "stopped", notify: Notify = say_nothing
) -> BottleRecord:
    record = state.read()
    if record.bottle == "?":  # a stub: nothing was started from it, so nothing runs; only --rm does anything
        if not remove:
            state.read_whole()
        if state.preserved():
            raise BottleError(f"{state.slug} is preserved ({state.preserved()}): state kept")
        with state.lock():
            state.remove()
        return record
    backend = get_bottle_backend(record.backend)
    with state.lock():
        backend.stop(state=state)
        after_run(state, notify)
        if record.status in ("crashed", "blocked") and status == "stopped":
            status = record.status  # stopping a crashed or blocked bottle keeps what happened to it
        record = state.update(status=status, attached_pid=None)
        if remove:
            if state.preserved():
                raise BottleError(f"{state.slug} is preserved ({state.preserved()}): stopped, state kept")
            remove_state(backend, state)
    return record


def remove_state(backend: BottleBackend, state: StateDir) -> None:
    """A state dir removed; what this user cannot remove (the bottle user's files, for a normal user) is
    first removed with the backend's help."""
    if state.foreign_files():
        backend.release_files(state)
    try:
        state.remove()
    except PermissionError as exc:
        raise BottleError(
            f"cannot remove {exc.filename or state.path} (the bottle's agent owns it): run `sudo rm -rf {state.path}`"
        ) from None


def ensure_stopped(state: StateDir, verb: str) -> None:
    """Refuse to bring a bottle's work home while any of it still runs, asked of its backend (a record can
    say crashed or blocked while its containers run on: its agent could change what is being read)."""
    record = state.read()
    backend = get_bottle_backend(record.backend)
    live = backend.statuses().get(state.slug)
    if live is not None and live.status == "running":
        raise BottleError(
            f"{state.slug} is running: its work can change between your review and the {verb}; "
            f"`claude-bottle stop {state.slug}` first (diff and log work while it runs)"
        )


def forget_bottle(state: StateDir) -> None:
    """A bottle whose engine is gone for good: its state dir removed without asking that engine (its
    secrets first zeroed). Refused while it is preserved, as `stop --rm` is."""
    with state.lock():
        if state.preserved():
            raise BottleError(
                f"{state.slug} is preserved ({state.preserved()}): `claude-bottle keep {state.slug} --release` first"
            )
        with contextlib.suppress(OSError):
            drop_secrets(state)
        state.remove()
