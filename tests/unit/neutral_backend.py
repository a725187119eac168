"""A throwaway backend for the layering tests (issue 22): its images come from the neutral builder, handed
over as an archive, as a VM backend's would; it imports nothing of any other backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from claude_bottle.backend import (
    BottleBackend,
    BottleCleanupPlan,
    BottlePlan,
    BottleStatus,
    Check,
    Progress,
    Report,
)
from claude_bottle.bottle import Bottle
from claude_bottle.bottle.state import StateDir
from claude_bottle.guard_inputs.inputs import GuardInputs
from claude_bottle.images import builder


class NeutralBackend(BottleBackend):
    name = "neutral"

    def plan(self, *, bottle: Bottle) -> BottlePlan:
        return BottlePlan(bottle, ["a bottle of the neutral test backend"])

    def prepare_images(self, *, plan: BottlePlan, progress: Progress) -> dict[str, str]:
        images = builder.prepare(plan.bottle, progress)
        images["agent-archive"] = str(builder.archive(images["agent"], progress, folder="neutral"))
        return images

    def start(self, *, plan: BottlePlan, images: dict[str, str], guard: GuardInputs, progress: Progress) -> None:
        raise NotImplementedError

    def wait_ready(self, *, state: StateDir, timeout: float = 30.0) -> None:
        raise NotImplementedError

    def stop(self, *, state: StateDir) -> None:
        pass

    def exec(self, *, state: StateDir, argv: Sequence[str], tty: bool, interactive: bool,
             workdir: str | None = None) -> int:  # fmt: skip
        return 0

    def exec_output(self, *, state: StateDir, argv: Sequence[str]) -> tuple[int, str]:
        return 0, ""

    def logs(self, *, state: StateDir, follow: bool, sink: Callable[[bytes], None]) -> int:
        return 0

    def statuses(self) -> dict[str, BottleStatus]:
        return {}

    def doctor(self, base_images: Sequence[str] = ()) -> list[Check]:
        return []

    def prepare_cleanup(self) -> BottleCleanupPlan:
        raise NotImplementedError

    def cleanup(self, plan: BottleCleanupPlan, *, report: Report) -> list[str]:
        return []
