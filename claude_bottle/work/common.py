"""What the work layer's modules share: the operator's notices, signals held off during a rollback or a start, a
started bottle."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from claude_bottle.backend import (
    BottleBackend,
    BottlePlan,
)
from claude_bottle.bottle.state import StateDir

if TYPE_CHECKING:
    from claude_bottle.bottle import Bottle


Notify = Callable[[str], None]  # a line for the operator (what a verb found, e.g. a quarantined git hook)


def say_nothing(_line: str) -> None:
    pass


@contextlib.contextmanager
def no_interrupts() -> Iterator[None]:
    """Let a rollback finish: a second Ctrl-C (or SIGTERM, SIGHUP) must not leave a half-removed bottle."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@dataclass
class Started:
    bottle: Bottle
    backend: BottleBackend
    plan: BottlePlan

    @property
    def slug(self) -> str:
        return self.bottle.slug

    @property
    def state(self) -> StateDir:
        return self.bottle.state


@contextlib.contextmanager
def terminations_as_exit() -> Iterator[None]:
    """SIGTERM/SIGHUP (a closed terminal, a kill) end a foreground run through the same path as an error,
    so the bottle is preserved and stopped rather than left running with nobody attached."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    # A signal the invoker chose to ignore stays ignored (`nohup claude-bottle start ...` survives a hangup).
    sigs = [sig for sig in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(sig) is not signal.SIG_IGN]
    old = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
