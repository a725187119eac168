"""What follows every run and what the operator runs to look after bottles: secrets dropped and the workspace settled
after a run, files brought home from elsewhere, doctor, cleanup."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from claude_bottle import process
from claude_bottle.backend import (
    BottleCleanupPlan,
    Check,
    Report,
    get_bottle_backend,
    known_backend_names,
)
from claude_bottle.bottle.state import StateDir
from claude_bottle.errors import BottleError
from claude_bottle.git.settle import settle_bottle
from claude_bottle.guard_inputs.files import drop_secrets

if TYPE_CHECKING:
    pass
from claude_bottle.work.common import Notify, say_nothing


def after_run(state: StateDir, notify: Notify) -> None:
    """What follows every run, its containers gone: credentials off the disk, a transcript snapshot an
    `ls` owed, and the workspace settled for git on the host (gitguard)."""
    drop_secrets(state)
    state.settle_snapshot()
    settle_bottle(state, notify)


def files_elsewhere(state: StateDir) -> bool:
    """Does the bottle keep its log and workspace away from this machine while it runs?"""
    try:
        return get_bottle_backend(state.read_whole().backend).files_elsewhere(state)
    except BottleError:
        return False


def bring_home(state: StateDir) -> str | None:
    """A running bottle's log, requests, transcripts and workspace, brought into its state dir now where
    its backend keeps them files_elsewhere (a remote engine, a cluster). Returns why it could not (the engine does
    not answer): what the last trip brought stays, and the caller says so."""
    record = state.read_whole()
    backend = get_bottle_backend(record.backend)
    if record.status != "running" and not backend.files_elsewhere(state):
        return None  # a stop brought everything home
    try:
        backend.bring_home(state)  # (a stopped one: what its stop could not bring, if anything is left)
    except BottleError as exc:
        return str(exc)
    return None


def doctor_checks(base_images: Sequence[str] = ()) -> list[tuple[str, list[Check]]]:
    """Each known backend's checks (a backend that cannot load says so as a failed check), for the base
    images a manifest names."""
    out = []
    for name in known_backend_names():
        try:
            checks = get_bottle_backend(name).doctor(base_images)
        except BottleError as exc:
            checks = [Check(f"{name} backend", False, str(exc))]
        out.append((name, checks))
    return out


def host_checks() -> list[Check]:
    """What keeps git on this machine from reading a bottle's tree: a bottle user nobody is, and git's
    ownership check not turned off (`safe.directory = *` trusts every repository, whoever owns it)."""
    from claude_bottle.identity import bottle_uid

    out = []
    try:
        uid = bottle_uid()
        out.append(Check("bottle user", True, f"uid {uid}, no account on this host"))
    except BottleError as exc:
        out.append(Check("bottle user", False, str(exc), "set CLAUDE_BOTTLE_AGENT_UID to a free uid"))
    try:
        values = process.run(["git", "config", "--show-origin", "--get-all", "safe.directory"], timeout=10, cwd="/")
    except BottleError:  # no git here: nothing trusts anything
        values = None
    found = values.stdout.splitlines() if values is not None else []
    star = [v for v in found if v.rstrip().endswith("\t*") or v.rstrip().endswith(" *")]
    if star:
        where = star[0].split("\t", 1)[0].removeprefix("file:")
        out.append(
            Check(
                "git ownership check",
                False,
                f"safe.directory = * in {where}: git here reads every repository, a bottle's included",
                f"remove that line ({where}); trust single folders by name instead",
            )
        )
    else:
        out.append(Check("git ownership check", True, "on: git refuses repositories another user owns"))
    return out


def cleanup_plans(skipped: Notify = say_nothing) -> list[BottleCleanupPlan]:
    """What cleanup would remove, per backend (changing nothing). A backend whose tool or engine is missing
    has nothing that can be reaped: `skipped` is told, and the rest goes on."""
    plans = []
    for name in known_backend_names():
        try:
            plans.append(get_bottle_backend(name).prepare_cleanup())
        except BottleError as exc:
            skipped(f"--- {name} backend: skipped ({exc})")
    return plans


def run_cleanup(plans: Sequence[BottleCleanupPlan], report: Report) -> list[str]:
    """Each backend removes its engine's objects, best effort; then, once for every backend, what follows:
    each bottle it stopped is marked so and settled (secrets dropped, workspace judged), and the orphan state
    dirs go (settled first: what that moves aside keeps its dir). One line per failure comes back."""
    failures: list[str] = []
    for plan in plans:
        failures += get_bottle_backend(plan.backend).cleanup(plan, report=report)
        for slug in plan.stopped:
            mark_stopped(slug, report)
    for plan in plans:
        for summary in plan.orphans:
            failures += _remove_orphan(StateDir(summary.slug, summary.path.parent), report)
    return failures


def mark_stopped(slug: str, report: Report) -> None:
    """A bottle whose containers cleanup removed is no longer running: its record says so, and what follows a
    run is done (secrets dropped, workspace settled)."""
    try:
        state = StateDir(slug)
    except BottleError:
        return  # a project name that is not a slug: nothing to mark
    if state.exists():
        if state.read().status in ("running", "creating"):
            state.update(status="stopped")
        with contextlib.suppress(BottleError, OSError):
            drop_secrets(state)
            settle_bottle(state, report)


def _remove_orphan(state: StateDir, report: Report) -> list[str]:
    with contextlib.suppress(BottleError, OSError):
        drop_secrets(state)
        settle_bottle(state, report)
    if state.preserved():
        report(f"kept state dir {state.path}: preserved ({state.preserved()})")
        return []
    try:
        if state.foreign_files():
            with contextlib.suppress(BottleError, OSError):
                get_bottle_backend(state.read().backend).release_files(state)
        state.remove()
    except (OSError, BottleError) as exc:
        why = str(exc)
        report(f"failed state dir {state.path}: {why}")
        return [f"state dir {state.path}: {why}"]
    report(f"removed state dir {state.path}")
    return []
