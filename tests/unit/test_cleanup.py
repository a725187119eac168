"""cleanup: plans from saved engine JSON, the one prompt, ordering, failures, preserve and cross-backend rules."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from claude_bottle.backend import _BACKENDS
from claude_bottle.backend.docker.backend import DockerBottleBackend
from claude_bottle.backend.docker.cleanup import plan_from_engine
from claude_bottle.bottle.state import BottleRecord, StateDir, list_state_dirs
from claude_bottle.cli import main
from claude_bottle.engine import ComposeProject, NetworkRow, PsRow
from claude_bottle.work.inventory import leftovers_hint

from .fakes import FakeBackend

SAMPLES = Path(__file__).parent / "samples"
LIVE_PROJECTS = {"claude-rqih3", "claude-z710w"}  # the slugs in the saved samples

FAKE_DOCKER = """
log = os.environ["FAKE_DOCKER_LOG"]
samples = os.environ["FAKE_DOCKER_SAMPLES"]
fail = set(filter(None, os.environ.get("FAKE_DOCKER_FAIL", "").split(",")))
args = sys.argv[1:]
with open(log, "a") as f:
    f.write(json.dumps(args) + "\\n")
def out(name):
    sys.stdout.write(open(os.path.join(samples, name)).read())
if args[:2] == ["compose", "ls"]:
    out("compose-ls.json")
elif args[:1] == ["ps"]:
    out("cleanup-ps.jsonl")
elif args[:2] == ["network", "ls"]:
    out("cleanup-networks.jsonl")
elif any(a in fail for a in args):
    sys.stderr.write("Error response from daemon: refused for the test\\n")
    sys.exit(1)
"""


@pytest.fixture
def fake_docker(fake_exe: Callable[[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "docker.log"
    log.touch()
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    monkeypatch.setenv("FAKE_DOCKER_SAMPLES", str(SAMPLES))
    fake_exe("docker", FAKE_DOCKER)
    return log


@pytest.fixture(autouse=True)
def only_docker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Cleanup walks every registered backend; the tests choose which exist."""
    monkeypatch.setattr("claude_bottle.backend._BACKENDS", dict(_BACKENDS))
    FakeBackend.reset()
    yield
    FakeBackend.reset()


INVENTORY = 6  # engine calls of a whole cleanup plan: compose ls, ps, network ls, volume ls; ps, network ls (sidecars)


def calls(log: Path) -> list[list[str]]:
    return [json.loads(x) for x in log.read_text().splitlines()]


def make_state(slug: str, *, status: str = "stopped", preserve: str | None = None, session: bool = False) -> StateDir:
    sd = StateDir(slug)
    sd.path.parent.mkdir(parents=True, exist_ok=True)
    sd.create()
    sd.write(
        BottleRecord(
            slug=slug,
            agent=slug.rsplit("-", 1)[0],
            bottle="default",
            backend="docker",
            status=status,
            session_id="s-1" if session else None,
        )
    )
    if preserve:
        sd.preserve(preserve)
    return sd


def read(name: str) -> str:
    return (SAMPLES / name).read_text()


def test_plan_from_saved_samples() -> None:
    make_state("claude-rqih3", status="running")
    make_state("old-aaaaa", session=True)
    make_state("kept-bbbbb", preserve="crash")
    plan = plan_from_engine(
        projects=ComposeProject.parse(read("compose-ls.json")),
        containers=PsRow.parse(read("cleanup-ps.jsonl")),
        networks=NetworkRow.parse(read("cleanup-networks.jsonl")),
        live={"claude-rqih3", "claude-z710w"},
        namespace="claude-bottle",
    )
    # Objects made before namespaces (our labels, no namespace label) are the default namespace's; a
    # user's own `claude-bottle-*` container, network and Compose project, and other namespaces' objects
    # (one of them, `claude-bottle-x`, sharing the name prefix), are never claimed.
    assert [p.name for p in plan.projects] == ["claude-bottle-claude-rqih3", "claude-bottle-claude-z710w"]
    assert [c.name for c in plan.containers] == ["claude-bottle-stray-abcde"]  # compose-managed ones are not strays
    assert [n.name for n in plan.networks] == ["claude-bottle-stray-abcde-net"]
    assert [s.slug for s in plan.state_dirs] == ["old-aaaaa"]
    assert not plan.state_dirs[0].resumable  # a session id but no transcript: nothing to resume
    assert sorted(s.slug for s in plan.kept) == ["claude-rqih3", "kept-bbbbb"]
    assert not plan.empty()


def test_a_namespace_claims_only_its_own_objects() -> None:
    plan = plan_from_engine(
        projects=ComposeProject.parse(read("compose-ls.json")),
        containers=PsRow.parse(read("cleanup-ps.jsonl")),
        networks=NetworkRow.parse(read("cleanup-networks.jsonl")),
        live=set(),
        namespace="cbtest-ab12",
    )
    assert [p.name for p in plan.projects] == ["cbtest-ab12-claude-qqqqq"]
    assert plan.containers == []
    assert [n.name for n in plan.networks] == ["cbtest-ab12-stray-net"]
    plan = plan_from_engine(projects=[], containers=[], networks=[], live=set(), namespace="claude-bottle-x")
    assert plan.empty()


def test_resumable_means_a_transcript_of_its_session() -> None:
    sd = make_state("ran-aaaaa", session=True)
    assert not sd.summary().resumable
    other = sd.claude_home / "projects" / "-workspace" / "another-session.jsonl"
    other.parent.mkdir(parents=True)
    other.write_text("{}\n")
    assert not sd.summary().resumable
    (other.parent / "s-1.jsonl").write_text("{}\n")
    assert sd.summary().resumable and "resumable" in sd.summary().describe()


def test_cleanup_yes_runs_in_order_and_removes_exactly_the_plan(
    fake_docker: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_state("claude-rqih3", status="running")
    make_state("old-aaaaa")
    make_state("kept-bbbbb", preserve="kept by the operator")
    assert main(["cleanup", "--yes"]) == 0
    argvs = calls(fake_docker)
    # A fixed number of inventory calls, whatever the number of objects: Docker's four, then the
    # smolmachines backend's sidecar bundles (its machines come from the SDK, not installed here).
    assert [a[:2] for a in argvs[:INVENTORY]] == [
        ["compose", "ls"], ["ps", "-a"], ["network", "ls"], ["volume", "ls"], ["ps", "-a"], ["network", "ls"],
    ]  # fmt: skip
    removals = argvs[INVENTORY:]
    downs = [a for a in removals if a[0] == "compose"]
    assert sorted(a[2] for a in downs) == ["claude-bottle-claude-rqih3", "claude-bottle-claude-z710w"]
    assert all(a[-5:] == ["down", "--volumes", "--remove-orphans", "--timeout", "1"] for a in downs)
    kinds = [a[0] for a in removals if a[0] != "compose"]
    assert kinds == ["rm", "network"]  # containers before networks
    # ... and before every project: a container outside Compose (a bottle's inbound relay) holds its networks.
    assert removals.index(next(a for a in removals if a[0] == "rm")) < min(removals.index(d) for d in downs)
    assert removals.index(next(a for a in removals if a[0] == "network")) > max(removals.index(d) for d in downs)
    assert [d.slug for d in list_state_dirs()] == ["claude-rqih3", "kept-bbbbb"]
    assert StateDir("claude-rqih3").read().status == "stopped"  # its containers are gone now
    out = capsys.readouterr().out
    assert "kept state dir: kept-bbbbb" in out and ".preserve (kept by the operator)" in out


def test_one_failure_is_reported_and_the_rest_goes_on(
    fake_docker: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_state("old-aaaaa")
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "claude-bottle-claude-z710w")
    assert main(["cleanup", "--yes"]) == 3
    captured = capsys.readouterr()
    assert "failed compose project claude-bottle-claude-z710w: Error response from daemon" in captured.out
    assert "removed compose project claude-bottle-claude-rqih3" in captured.out
    assert "removed network claude-bottle-stray-abcde-net" in captured.out
    assert list_state_dirs() == []
    assert "1 removal(s) failed" in captured.err


def test_batch_failure_falls_back_to_one_by_one(
    fake_docker: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [json.loads(x) for x in read("cleanup-networks.jsonl").splitlines()]
    stray_net_id = next(r["ID"] for r in rows if r["Name"] == "claude-bottle-stray-abcde-net")
    monkeypatch.setenv("FAKE_DOCKER_FAIL", stray_net_id)
    assert main(["cleanup", "--yes"]) == 3
    out = capsys.readouterr().out
    assert "removed container claude-bottle-stray-abcde" in out
    assert "failed network claude-bottle-stray-abcde-net: Error response from daemon" in out
    network_calls = [a for a in calls(fake_docker) if a[:2] == ["network", "rm"]]
    assert len(network_calls) == 2  # the batch, then the one that failed, by itself


def test_answering_no_changes_nothing(
    fake_docker: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_state("old-aaaaa")
    monkeypatch.setattr("claude_bottle.cli.cleanup.confirm", lambda q: False)
    assert main(["cleanup"]) == 0
    assert len(calls(fake_docker)) == INVENTORY  # the inventory, nothing removed
    assert [d.slug for d in list_state_dirs()] == ["old-aaaaa"]
    assert "aborted" in capsys.readouterr().err


def test_no_tty_and_no_yes_refuses(fake_docker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_state("old-aaaaa")
    assert main(["cleanup"]) == 1
    assert "pass --yes" in capsys.readouterr().err
    assert len(calls(fake_docker)) == INVENTORY


def test_dry_run_prints_and_changes_nothing(fake_docker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_state("old-aaaaa")
    assert main(["cleanup", "--dry-run"]) == 0
    assert len(calls(fake_docker)) == INVENTORY and [d.slug for d in list_state_dirs()] == ["old-aaaaa"]
    assert "orphan state dir: old-aaaaa" in capsys.readouterr().out


def test_all_empty_short_circuits_without_asking(
    fake_exe: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_exe("docker", "print('[]' if sys.argv[1:3] == ['compose', 'ls'] else '')")

    def never(q: str) -> bool:
        raise AssertionError("asked although there was nothing to do")

    monkeypatch.setattr("claude_bottle.cli.cleanup.confirm", never)
    make_state("kept-bbbbb", preserve="crash")
    assert main(["cleanup"]) == 0
    assert [d.slug for d in list_state_dirs()] == ["kept-bbbbb"]


def test_a_live_bottle_of_another_backend_keeps_its_state(fake_docker: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_BACKENDS, "fake", "tests.unit.fakes:FakeBackend")
    monkeypatch.setattr("claude_bottle.backend._BACKENDS", {**_BACKENDS, "fake": "tests.unit.fakes:FakeBackend"})
    FakeBackend.live = {"vm-ccccc": "running"}
    FakeBackend.leftovers = {"vm machine claude-bottle-vm-ccccc"}
    make_state("vm-ccccc", status="running")
    make_state("old-aaaaa")
    assert main(["cleanup", "--yes"]) == 0
    assert [d.slug for d in list_state_dirs()] == ["vm-ccccc"]
    assert "cleanup" in FakeBackend.calls and FakeBackend.leftovers == set()


def test_a_start_in_progress_is_never_reaped(fake_docker: Path) -> None:
    sd = make_state("new-ddddd", status="creating")
    sd.update(owner_pid=__import__("os").getpid())
    with sd.lock():
        assert main(["cleanup", "--yes"]) == 0
    assert [d.slug for d in list_state_dirs()] == ["new-ddddd"]


def test_abandoned_start_shows_in_ls_and_is_reaped(fake_docker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = make_state("gone-eeeee", status="creating")
    sd.update(owner_pid=2**22 + 12345)  # no such process
    assert main(["ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "abandoned (owner died mid-start)"
    assert main(["cleanup", "--yes"]) == 0
    assert list_state_dirs() == []


def test_keep_and_release(fake_docker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_state("old-aaaaa")
    assert main(["keep", "old-aaaaa"]) == 0
    assert StateDir("old-aaaaa").preserved() == "kept by the operator"
    assert main(["cleanup", "--yes"]) == 0
    assert [d.slug for d in list_state_dirs()] == ["old-aaaaa"]
    assert main(["keep", "old-aaaaa", "--release"]) == 0
    assert main(["cleanup", "--yes"]) == 0
    assert list_state_dirs() == []


def test_docker_prepare_cleanup_uses_four_engine_calls(fake_docker: Path) -> None:
    plan = DockerBottleBackend().prepare_cleanup()
    assert len(calls(fake_docker)) == 4  # compose ls, ps, network ls, volume ls
    assert {p.name.removeprefix("claude-bottle-") for p in plan.projects} == LIVE_PROJECTS


def _odd_dirs() -> dict[str, Path]:
    """State dirs as crashes and hands leave them: empty, only a .preserve, a half-written record."""
    root = StateDir("x-aaaaa").path.parent
    root.mkdir(parents=True, exist_ok=True)
    made = {}
    for slug in ("empty-aaaaa", "kept-aaaaa", "torn-aaaaa"):
        (root / slug).mkdir(mode=0o700)
        made[slug] = root / slug
    (root / "kept-aaaaa" / ".preserve").write_text("kept by the operator\n")
    (root / "torn-aaaaa" / "bottle.json").write_text('{"slug": "torn-aaaaa", "agent": "to')
    old = time.time() - 3600  # a crash long ago, not a start in progress
    for p in made.values():
        os.utime(p, (old, old))
    return made


def test_odd_state_dirs_are_classified_and_the_rest_is_reaped(
    fake_docker: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = _odd_dirs()
    make_state("old-aaaaa")
    assert main(["cleanup", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "orphan state dir: empty-aaaaa [incomplete]" in out and "no bottle.json" in out
    assert "kept state dir: kept-aaaaa [incomplete]" in out and ".preserve (kept by the operator)" in out
    assert "orphan state dir: torn-aaaaa [failed]" in out and "bottle.json was unreadable" in out
    assert main(["cleanup", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "removed compose project claude-bottle-claude-rqih3" in out  # the engine's leftovers too
    assert [d.slug for d in list_state_dirs()] == ["kept-aaaaa"]
    assert made["kept-aaaaa"].is_dir()


def test_a_dir_made_moments_ago_may_be_a_start_and_is_kept(
    fake_docker: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = StateDir("x-aaaaa").path.parent
    root.mkdir(parents=True)
    (root / "new-aaaaa").mkdir()
    assert main(["cleanup", "--yes"]) == 0
    assert "kept state dir: new-aaaaa [incomplete]" in capsys.readouterr().out
    assert [d.slug for d in list_state_dirs()] == ["new-aaaaa"]


def test_odd_state_dirs_never_stop_ls_or_the_leftovers_note(capsys: pytest.CaptureFixture[str]) -> None:
    _odd_dirs()
    assert main(["ls", "--json"]) == 0
    rows = {r["slug"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["empty-aaaaa"]["status"] == "incomplete" and rows["torn-aaaaa"]["status"] == "failed"
    assert leftovers_hint() == "note: 2 leftover bottles from earlier runs; `claude-bottle cleanup` reaps them"


def test_a_corrupt_record_is_copied_aside_once() -> None:
    _odd_dirs()
    sd = StateDir("torn-aaaaa")
    for _ in range(3):
        assert sd.read().status == "failed"
    copies = list(sd.path.glob("bottle.corrupt-*"))
    assert len(copies) == 1 and copies[0].read_text() == '{"slug": "torn-aaaaa", "agent": "to'
    assert copies[0].stat().st_mode & 0o777 == 0o600
    (sd.path / "bottle.json").write_text("[]")  # torn differently: a second copy, of those bytes
    sd.read()
    assert len(list(sd.path.glob("bottle.corrupt-*"))) == 2


def test_verbs_on_an_odd_dir_say_what_it_is_and_stop_rm_removes_it(capsys: pytest.CaptureFixture[str]) -> None:
    _odd_dirs()
    assert main(["resume", "empty-aaaaa", "--detach"]) == 1
    err = capsys.readouterr().err
    assert "empty-aaaaa is not a whole bottle (no bottle.json" in err and "stop empty-aaaaa --rm" in err
    assert main(["stop", "kept-aaaaa", "--rm"]) == 1
    assert "preserved" in capsys.readouterr().err
    assert main(["stop", "torn-aaaaa", "--rm"]) == 0
    assert [d.slug for d in list_state_dirs()] == ["empty-aaaaa", "kept-aaaaa"]


def test_a_detached_run_that_failed_is_noticed_and_kept_by_cleanup(fake_docker: Path) -> None:
    """Not noticed by any `ls` before: cleanup records the crash first, so the transcript is kept."""
    sd = make_state("ran-aaaaa", status="running", session=True)
    (sd.claude_home / "bottle-run.exit").parent.mkdir(parents=True)
    (sd.claude_home / "bottle-run.exit").write_text("1\n")
    plan = plan_from_engine(projects=[], containers=[], networks=[], live=set(), namespace="claude-bottle")
    assert [s.slug for s in plan.kept] == ["ran-aaaaa"] and plan.kept[0].preserved == "crash"
    assert sd.read().status == "crashed" and plan.state_dirs == []


def test_cleanup_zeroes_the_secrets_of_what_it_stops_and_removes(fake_docker: Path) -> None:
    witnesses = []
    for slug, status in (("claude-rqih3", "running"), ("old-aaaaa", "stopped")):
        sd = make_state(slug, status=status)
        secrets = sd.path / "guard" / "secrets.json"
        secrets.parent.mkdir()
        secrets.write_text('{"routes": {"anthropic": {"value": "sk-ant-REAL"}}}')
        witnesses.append(sd.path.parent / f"witness-{slug}")
        os.link(secrets, witnesses[-1])
    assert main(["cleanup", "--yes"]) == 0
    assert not (StateDir("claude-rqih3").path / "guard" / "secrets.json").exists()  # stopped: state kept
    assert not StateDir("old-aaaaa").path.exists()  # an orphan: removed
    for w in witnesses:
        assert w.read_bytes() == b"\0" * w.stat().st_size and w.stat().st_size > 0


def test_the_plan_says_exactly_what_it_will_do() -> None:
    """Every line of the plan the operator approves, exactly: what each thing is, what is done to it, why a
    kept state dir is kept."""
    from claude_bottle.backend.docker.cleanup import DockerBottleCleanupPlan, Stray

    make_state("gone-aaaaa", session=True)
    make_state("live-bbbbb", status="running")
    make_state("crash-ccccc", preserve="crash")
    plan = plan_from_engine(
        projects=[],
        containers=[PsRow("c1", "claude-bottle-stray-eeeee", "exited", {"claude-bottle.namespace": "claude-bottle"})],
        networks=[NetworkRow("n1", "claude-bottle-stray-net", {"claude-bottle.namespace": "claude-bottle"})],
        live={"live-bbbbb"},
        namespace="claude-bottle",
    )
    plan.projects = [
        ComposeProject("claude-bottle-live-bbbbb", "running(3)", "/x"),
        ComposeProject("claude-bottle-dead-ddddd", "exited(2)", "/y"),
    ]
    plan.abandoned = ["dead-ddddd"]
    plan.warnings = ["smolmachines backend: no live bottles listed (no SDK)"]
    text = plan.lines()
    assert text[:6] == [
        "--- docker backend ---",
        "note: smolmachines backend: no live bottles listed (no SDK)",
        "compose project: claude-bottle-live-bbbbb (running(3)) -> compose down --volumes",
        "compose project: claude-bottle-dead-ddddd (exited(2)) (owner died mid-start) -> compose down --volumes",
        "stray container: claude-bottle-stray-eeeee -> docker rm -f",
        "stray network: claude-bottle-stray-net -> docker network rm",
    ]
    assert [t for t in text if t.startswith("orphan state dir: gone-aaaaa [stopped] ")] == [text[6]]
    assert text[6].endswith(" -> removed")
    kept = [t for t in text if t.startswith("kept state dir:")]
    assert next(t for t in kept if "crash-ccccc" in t).endswith(": .preserve (crash)")
    assert next(t for t in kept if "live-bbbbb" in t).endswith(" (live bottle)")
    assert not plan.empty()
    empty = DockerBottleCleanupPlan()
    assert empty.empty() and empty.lines() == ["--- docker backend ---", "nothing to clean up"]
    only_kept = DockerBottleCleanupPlan(kept=plan.kept)
    assert only_kept.empty() and "nothing to clean up" not in only_kept.lines()
    assert DockerBottleCleanupPlan(containers=[Stray("c", "n")]).empty() is False
    assert DockerBottleCleanupPlan(networks=[Stray("n", "n")]).empty() is False
    assert DockerBottleCleanupPlan(state_dirs=plan.state_dirs).empty() is False


def test_why_a_state_dir_is_kept() -> None:
    from claude_bottle.backend.docker.cleanup import _why_kept
    from claude_bottle.bottle.state import StateSummary

    def summary(status: str, preserved: str | None = None) -> StateSummary:
        return StateSummary("s-aaaaa", Path("/x"), status, False, False, False, preserved, 0)

    assert _why_kept(summary("stopped", "crash")) == ""
    assert _why_kept(summary("unreadable")) == " (could not be read: look at it by hand)"
    assert _why_kept(summary("incomplete")) == " (made moments ago: may be a start in progress)"
    assert _why_kept(summary("running")) == " (live bottle)"
