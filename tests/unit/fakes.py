"""A fake backend implementing the real ABC (and nothing else), for CLI and lifecycle tests without an engine.
No file under claude_bottle/ knows it: tests register it by name in the registry."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from claude_bottle.backend import BottleBackend, BottleCleanupPlan, BottlePlan, BottleStatus, Check, Progress, Report
from claude_bottle.bottle import Bottle
from claude_bottle.bottle.state import StateDir
from claude_bottle.errors import BackendError
from claude_bottle.guard_inputs.inputs import GuardInputs


@dataclass
class Exec:
    """One command the fake was asked to run in a bottle, with how it was asked."""

    argv: list[str]
    tty: bool
    interactive: bool
    workdir: str | None
    env: dict[str, str]


class FakeBackend(BottleBackend):
    """Scriptable: `on_exec(argv)` may act (raise, signal) and return an exit code; `outputs` maps a
    substring of an exec_output argv to its (exit code, output)."""

    name = "fake"
    execs: ClassVar[list[Exec]] = []
    on_exec: ClassVar[Callable[[list[str]], int | None] | None] = None
    outputs: ClassVar[dict[str, tuple[int, str]]] = {}
    logs_follow: ClassVar[list[bool]] = []
    # Class-level so the test can see what instances created by the registry did.
    calls: ClassVar[list[str]] = []
    started: ClassVar[list[Bottle]] = []  # the bottle of each start, as the backend was given it
    live: ClassVar[dict[str, str]] = {}
    fail_at: ClassVar[str | None] = None
    interrupt_at: ClassVar[str | None] = None
    signal_at: ClassVar[tuple[str, int] | None] = None
    exec_rc: ClassVar[int] = 0
    leftovers: ClassVar[set[str]] = set()
    unremovable: ClassVar[set[str]] = set()

    @classmethod
    def reset(cls) -> None:
        cls.calls, cls.live, cls.fail_at, cls.interrupt_at, cls.exec_rc = [], {}, None, None, 0
        cls.started = []
        cls.signal_at = None
        cls.leftovers, cls.unremovable = set(), set()
        cls.logs_output = b""
        cls.execs, cls.on_exec, cls.outputs, cls.logs_follow = [], None, {}, []

    def _step(self, what: str) -> None:
        self.calls.append(what)
        if self.interrupt_at == what:
            raise KeyboardInterrupt
        if self.signal_at is not None and self.signal_at[0] == what:
            os.kill(os.getpid(), self.signal_at[1])  # as `kill PID` from outside, mid-step
        if self.fail_at == what:
            raise BackendError(f"fake {what} failed")

    def plan(self, *, bottle: Bottle) -> BottlePlan:
        self._step("plan")
        return BottlePlan(bottle)

    def prepare_images(self, *, plan: BottlePlan, progress: Progress) -> dict[str, str]:
        self._step("images")
        progress("building fake image")
        return {"agent": "fake-agent:1", "guard": "fake-guard:1"}

    def start(self, *, plan: BottlePlan, images: dict[str, str], guard: GuardInputs, progress: Progress) -> None:
        self._step("start")
        self.started.append(plan.bottle)
        self.live[plan.slug] = "running"

    def wait_ready(self, *, state: StateDir, timeout: float = 30.0) -> None:
        self._step("wait")

    def stop(self, *, state: StateDir) -> None:
        self._step("stop")
        self.live.pop(state.slug, None)

    def exec(
        self,
        *,
        state: StateDir,
        argv: Sequence[str],
        tty: bool,
        interactive: bool,
        workdir: str | None = None,
        env: dict[str, str] | None = None,
    ) -> int:
        self.calls.append("exec " + " ".join(argv))
        self.execs.append(Exec(list(argv), tty, interactive, workdir, dict(env or {})))
        if "--session-id" in argv and argv[0] == "claude":  # claude keeps a transcript of its session
            sid = argv[list(argv).index("--session-id") + 1]
            transcript = state.claude_home / "projects" / "-workspace" / f"{sid}.jsonl"
            transcript.parent.mkdir(parents=True, exist_ok=True)
            transcript.touch()
        hook = type(self).on_exec  # a plain function: not bound to this instance
        if hook is not None:
            rc = hook(list(argv))
            if rc is not None:
                return rc
        return self.exec_rc

    def exec_output(self, *, state: StateDir, argv: Sequence[str]) -> tuple[int, str]:
        self.calls.append("exec_output " + " ".join(argv))
        for needle, answer in self.outputs.items():
            if needle in " ".join(argv):
                return answer
        return 1, ""

    logs_output: ClassVar[bytes] = b""

    def logs(self, *, state: StateDir, follow: bool, sink: Callable[[bytes], None]) -> int:
        self.logs_follow.append(follow)
        sink(self.logs_output)
        return 0

    def statuses(self) -> dict[str, BottleStatus]:
        return {s: BottleStatus(s, self.name, st) for s, st in self.live.items()}

    def doctor(self, base_images: Sequence[str] = ()) -> list[Check]:
        return [Check("fake", True, "ok")]

    def prepare_cleanup(self) -> FakeCleanupPlan:
        self.calls.append("prepare_cleanup")
        return FakeCleanupPlan(sorted(self.leftovers))

    def cleanup(self, plan: BottleCleanupPlan, *, report: Report) -> list[str]:
        assert isinstance(plan, FakeCleanupPlan)
        self.calls.append("cleanup")
        failures = [f"fake {x}: refused" for x in plan.items if x in self.unremovable]
        for x in plan.items:
            if x not in self.unremovable:
                self.leftovers.discard(x)
        return failures


@dataclass
class FakeCleanupPlan(BottleCleanupPlan):
    items: list[str]
    backend: str = "fake"

    def lines(self) -> list[str]:
        return ["--- fake backend ---", *(f"fake leftover: {x}" for x in self.items)]

    def empty(self) -> bool:
        return not self.items
