"""What follows every run and what the operator runs to look after bottles: secrets dropped and the workspace settled
after a run, files brought home from elsewhere, doctor, cleanup."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

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
from claude_bottle.work.common import Notify


def after_run(state: StateDir, notify: Notify) -> None:
    """What follows every run, its containers gone: credentials off the disk, a transcript snapshot an
    `ls` owed, and the workspace settled for git on the host (gitguard)."""
    drop_secrets(state)
    state.settle_snapshot()
    settle_bottle(state, notify)


def files_elsewhere(state: StateDir) -> bool:
    """Does the bottle keep its log and workspace away from this machine while it runs?"""
    try:
        return get_bottle_backend(state.read_whole().backend).elsewhere(state)
    except BottleError:
        return False


def bring_home(state: StateDir) -> str | None:
    """A running bottle's log, requests, transcripts and workspace, brought into its state dir now where
    its backend keeps them files_elsewhere (a remote engine, a cluster). Returns why it could not (the engine does
    not answer): what the last trip brought stays, and the caller says so."""
    record = state.read_whole()
    backend = get_bottle_backend(record.backend)
    if record.status != "running" and not backend.elsewhere(state):
        return None  # a stop brought everything home
    try:
        backend.sync(state)  # (a stopped one: what its stop could not bring, if anything is left)
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
    import subprocess

    from claude_bottle.identity import bottle_uid

    out = []
    try:
        uid = bottle_uid()
        out.append(Check("bottle user", True, f"uid {uid}, no account on this host"))
    except BottleError as exc:
        out.append(Check("bottle user", False, str(exc), "set CLAUDE_BOTTLE_AGENT_UID to a free uid"))
    try:
        got = subprocess.run(
            ["git", "config", "--show-origin", "--get-all", "safe.directory"],
            capture_output=True, text=True, timeout=10, check=False, cwd="/",
        )  # fmt: skip
        values = got.stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        values = []
    star = [v for v in values if v.rstrip().endswith("\t*") or v.rstrip().endswith(" *")]
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


def cleanup_plans() -> list[BottleCleanupPlan]:
    """What cleanup would remove, per backend (changing nothing)."""
    return [get_bottle_backend(name).prepare_cleanup() for name in known_backend_names()]


def run_cleanup(plans: Sequence[BottleCleanupPlan], report: Report) -> list[str]:
    """Each backend removes what its plan lists, best effort; one line per failure comes back."""
    failures: list[str] = []
    for plan in plans:
        failures += get_bottle_backend(plan.backend).cleanup(plan, report=report)
    return failures
