"""Lifecycle and inventory paths (issue 10), through main(argv) on a fake backend that records what it is
asked (argv, tty, env, workdir) and can be scripted, plus the Docker backend's start on a fake `docker`."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from claude_bottle.backend import _BACKENDS
from claude_bottle.bottle import claude_code
from claude_bottle.bottle.claude_code import CAPABILITY_PROMPT
from claude_bottle.bottle.state import StateDir, bottle_home, list_state_dirs
from claude_bottle.cli import main
from claude_bottle.manifest import AgentSpec
from claude_bottle.manifest.trust import trust_file

from .fakes import FakeBackend

MANIFEST = """
[bottles.default]
backend = "fake"
[bottles.default.egress]
allow = ["api.example.com"]
[agents.claude]
model = "claude-opus-4"
permission_mode = "acceptEdits"
claude_args = ["--verbose", "--max-turns", "3"]
append_system_prompt = "be brief"
[agents.plain]
"""


@pytest.fixture(autouse=True)
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeBackend]]:
    monkeypatch.setitem(_BACKENDS, "fake", "tests.unit.fakes:FakeBackend")
    FakeBackend.reset()
    yield FakeBackend
    FakeBackend.reset()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "proj"
    d.mkdir()
    (d / "claude-bottle.toml").write_text(MANIFEST)
    trust_file(d / "claude-bottle.toml", home=bottle_home())
    monkeypatch.chdir(d)
    return d


def tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("claude_bottle.cli._common.is_tty", lambda: True)
    monkeypatch.setattr("claude_bottle.cli.attach.is_tty", lambda: True)


# -- every agent option reaches claude's argv ---------------------------------------------------------
def test_every_agent_option_reaches_claudes_argv(project: Path) -> None:
    assert main(["start", "claude", "--prompt", "do it"]) == 0
    run = FakeBackend.execs[-1]
    (sd,) = list_state_dirs()
    assert run.argv == [
        "claude", "--permission-mode", "acceptEdits", "--model", "claude-opus-4", "--append-system-prompt",
        CAPABILITY_PROMPT + "\n\nbe brief", "--verbose", "--max-turns", "3", "--session-id", sd.read().session_id,
        "-p", "do it",
    ]  # fmt: skip
    assert (run.tty, run.interactive) == (False, False)


def test_the_default_agent_skips_claudes_own_prompts_and_resumes_its_session() -> None:
    a = AgentSpec()
    assert claude_code.claude_argv(a, prompt=None, session_id="s1") == [
        "claude",
        "--dangerously-skip-permissions",
        "--append-system-prompt",
        CAPABILITY_PROMPT,  # how to ask for what the bottle lacks
        "--session-id",
        "s1",
    ]
    assert claude_code.claude_argv(a, prompt="p", session_id="s1", resume=True)[-4:] == ["--resume", "s1", "-p", "p"]
    # A continuation on a terminal is the interactive session's first message, not a headless run.
    assert claude_code.claude_argv(a, prompt="go on", session_id="s1", resume=True, headless=False)[-3:] == [
        "--resume", "s1", "go on",
    ]  # fmt: skip


# -- interactive runs, attach, detach, signals ---------------------------------------------------------
def test_interactive_run_in_tmux_then_attached_and_its_exit_read(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tty(monkeypatch)
    monkeypatch.setenv("TERM", "xterm-kitty")
    monkeypatch.setenv("COLORTERM", "truecolor")
    FakeBackend.outputs = {"cat /tmp/claude-bottle-exit": (0, "0\n")}
    assert main(["start", "plain"]) == 0
    session, attach = FakeBackend.execs[-2:]
    assert session.argv[:7] == ["tmux", "-u", "new-session", "-d", "-s", "claude", "-x"]
    assert "bottle-run" in session.argv
    assert attach.argv == ["tmux", "-u", "attach-session", "-t", "claude"]
    assert (attach.tty, attach.interactive) == (True, True)
    # The operator's terminal, as tmux must know it to draw claude as it looks outside a bottle.
    assert attach.env == {"TERM": "xterm-kitty", "COLORTERM": "truecolor"}
    (sd,) = list_state_dirs()
    assert (sd.read().status, sd.preserved()) == ("stopped", None)


def test_detaching_from_an_interactive_run_leaves_it_running(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tty(monkeypatch)
    FakeBackend.outputs = {"has-session": (0, "")}  # tmux still has the session: the user pressed Ctrl-b d
    assert main(["start", "plain"]) == 0
    (sd,) = list_state_dirs()
    assert sd.read().status == "running" and "stop" not in FakeBackend.calls


def test_a_detached_headless_run_logs_to_the_run_log(project: Path) -> None:
    assert main(["start", "claude", "--detach", "--prompt", "work"]) == 0
    (session,) = [e for e in FakeBackend.execs if e.argv[:3] == ["tmux", "-u", "new-session"]]
    assert "BOTTLE_RUN_LOG=/home/claude/.claude/bottle-run.log" in session.argv
    assert session.argv[-2:] == ["-p", "work"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_attached_preserves_the_run_as_a_crash(
    project: Path, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    def killed(argv: list[str]) -> int | None:
        if argv[:1] == ["claude"]:
            os.kill(os.getpid(), sig)  # the terminal closed, or someone ran kill, mid-run
        return None

    FakeBackend.on_exec = killed
    before = signal.signal(sig, signal.SIG_DFL)  # as a terminal leaves it (a run under nohup ignores SIGHUP)
    try:
        assert main(["start", "plain", "--prompt", "x"]) == 128 + sig
        (sd,) = list_state_dirs()
        record = sd.read()
        assert (record.status, sd.preserved()) == ("crashed", "crash")
        assert record.error == f"claude-bottle was terminated (SystemExit {128 + sig})"
        assert FakeBackend.calls[-1] == "stop" and signal.getsignal(sig) is signal.SIG_DFL  # put back
    finally:
        signal.signal(sig, before)


def test_a_hangup_the_invoker_ignores_stays_ignored(project: Path) -> None:
    """`nohup claude-bottle start ...`: the hangup does not end the run."""

    def hangup(argv: list[str]) -> int | None:
        if argv[:1] == ["claude"]:
            os.kill(os.getpid(), signal.SIGHUP)
        return None

    FakeBackend.on_exec = hangup
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert main(["start", "plain", "--prompt", "x"]) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_attach_starts_claude_continuing_the_session_when_none_runs(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tty(monkeypatch)
    assert main(["start", "plain", "--detach"]) == 0
    (sd,) = list_state_dirs()
    session_id = sd.read().session_id
    (sd.claude_home / "projects" / "-workspace").mkdir(parents=True)
    (sd.claude_home / "projects" / "-workspace" / f"{session_id}.jsonl").write_text("{}\n")
    FakeBackend.execs.clear()
    FakeBackend.on_exec = ends_with(sd, "0")  # the user typed /exit while attached
    assert main(["attach", sd.slug]) == 0
    session, attach = FakeBackend.execs
    assert session.argv[-2:] == ["--resume", session_id]
    assert attach.argv == ["tmux", "-u", "attach-session", "-t", "claude"] and attach.tty
    assert (sd.read().status, sd.preserved()) == ("running", None)  # a normal end; the bottle stays up


def ends_with(sd: StateDir, code: str) -> Callable[[list[str]], int | None]:
    """claude ends while attached, leaving its exit code where bottle-run does (claude-home)."""

    def hook(argv: list[str]) -> int | None:
        if "attach-session" in argv:
            (sd.claude_home / "bottle-run.exit").write_text(code + "\n")
        return None

    return hook


@pytest.mark.parametrize(("code", "crashed"), [("0", False), ("130", False), ("3", True), ("137", True), ("143", True)])
def test_claude_ending_while_attached_is_recorded(
    project: Path, monkeypatch: pytest.MonkeyPatch, code: str, crashed: bool
) -> None:
    tty(monkeypatch)
    assert main(["start", "plain", "--detach"]) == 0
    (sd,) = list_state_dirs()
    FakeBackend.on_exec = ends_with(sd, code)
    assert main(["attach", sd.slug]) == int(code)
    record = sd.read()
    if crashed:
        assert (record.status, sd.preserved(), record.error) == ("crashed", "crash", f"claude exited with {code}")
    else:
        assert (record.status, sd.preserved()) == ("running", None)


@pytest.mark.parametrize(
    ("code", "status"),
    [("0", "running (claude finished)"), ("130", "running (claude finished)"), ("2", "crashed"), ("143", "crashed")],
)
def test_a_detached_runs_end_is_noticed_by_ls(
    project: Path, capsys: pytest.CaptureFixture[str], code: str, status: str
) -> None:
    assert main(["start", "plain", "--prompt", "go", "--detach"]) == 0
    (sd,) = list_state_dirs()
    FakeBackend.live = {sd.slug: "running"}
    (sd.claude_home / "bottle-run.exit").write_text(code + "\n")
    capsys.readouterr()
    assert main(["ls", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == status
    if status == "crashed":
        assert sd.preserved() == "crash" and sd.read().error == f"claude exited with {code} (a detached run)"
        assert sd.read().snapshot_due  # owed to the next stop or resume: ls copies nothing


def test_a_new_run_clears_the_last_runs_end(project: Path) -> None:
    assert main(["start", "plain", "--prompt", "go", "--detach"]) == 0
    (sd,) = list_state_dirs()
    (sd.claude_home / "bottle-run.exit").write_text("2\n")
    assert main(["stop", sd.slug]) == 0
    assert main(["resume", sd.slug, "--prompt", "again", "--detach"]) == 0
    assert not (sd.claude_home / "bottle-run.exit").exists()


def test_attach_needs_a_terminal(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["start", "plain", "--detach"]) == 0
    (sd,) = list_state_dirs()
    assert main(["attach", sd.slug]) == 1
    assert "attach needs a terminal" in capsys.readouterr().err


def test_shell_and_exec_and_logs_follow(project: Path) -> None:
    assert main(["start", "plain", "--detach"]) == 0
    (sd,) = list_state_dirs()
    assert main(["shell", sd.slug]) == 0
    shell = FakeBackend.execs[-1]
    assert shell.argv[0] in ("bash", "sh", "/bin/bash") and shell.interactive
    assert main(["exec", sd.slug, "--", "id", "-u"]) == 0
    assert FakeBackend.execs[-1].argv == ["id", "-u"]
    assert main(["logs", sd.slug, "--follow"]) == 0
    assert FakeBackend.logs_follow == [True]


# -- state across stops -------------------------------------------------------------------------------
def test_secrets_are_zeroed_and_removed_at_stop(project: Path) -> None:
    assert main(["start", "plain", "--detach"]) == 0
    (sd,) = list_state_dirs()
    secrets = sd.path / "guard" / "secrets.json"
    secrets.parent.mkdir(exist_ok=True)
    secrets.write_text('{"routes": {"anthropic": {"value": "sk-ant-REAL"}}}')
    other_name = sd.path / "guard" / "hardlink"  # another name for the same file: its blocks are zeroed
    os.link(secrets, other_name)
    assert main(["stop", sd.slug]) == 0
    assert not secrets.exists()
    assert other_name.read_bytes() == b"\0" * other_name.stat().st_size and other_name.stat().st_size > 0


def plant_secrets(sd: StateDir) -> Path:
    """The guard's secrets file, and a second name for it whose blocks must end up zeroed."""
    secrets = sd.path / "guard" / "secrets.json"
    secrets.parent.mkdir(exist_ok=True)
    secrets.write_text('{"routes": {"anthropic": {"value": "sk-ant-REAL"}}}')
    witness = sd.path.parent / f"witness-{sd.slug}-{len(list(sd.path.parent.glob('witness-*')))}"
    os.link(secrets, witness)
    return witness


@pytest.mark.parametrize("how", ["stop --rm", "crash", "noticed crash, then stop", "failed resume"])
def test_secrets_outlive_no_ending(project: Path, capsys: pytest.CaptureFixture[str], how: str) -> None:
    if how == "crash":  # a foreground run whose claude fails: the bottle is stopped and kept as crashed
        witness: list[Path] = []
        FakeBackend.on_exec = lambda argv: (witness.append(plant_secrets(list_state_dirs()[0])), 3)[1]
        assert main(["start", "plain", "--prompt", "x"]) == 3
        (sd,) = list_state_dirs()
        assert sd.preserved() == "crash"
        w = witness[0]
    else:
        assert main(["start", "plain", "--detach"]) == 0
        (sd,) = list_state_dirs()
        w = plant_secrets(sd)
        if how == "stop --rm":
            assert main(["stop", sd.slug, "--rm"]) == 0
            assert not sd.path.exists()
        elif how == "noticed crash, then stop":
            FakeBackend.live[sd.slug] = "exited (137)"
            assert main(["ls"]) == 0
            assert main(["stop", sd.slug]) == 0
        else:
            assert main(["stop", sd.slug]) == 0
            w = plant_secrets(sd)
            FakeBackend.fail_at = "wait"
            assert main(["resume", sd.slug, "--detach"]) == 3
    assert not (sd.path / "guard" / "secrets.json").exists()
    assert w.read_bytes() == b"\0" * w.stat().st_size and w.stat().st_size > 0


def test_grants_are_kept_across_resume(project: Path) -> None:
    assert main(["start", "plain", "--detach"]) == 0
    (sd,) = list_state_dirs()
    assert main(["grant", sd.slug, "--egress", "granted.example:8443"]) == 0
    assert main(["stop", sd.slug]) == 0
    assert main(["resume", sd.slug, "--detach"]) == 0
    grants = json.loads((sd.path / "grants.json").read_text())["egress"]
    assert grants == [{"host": "granted.example", "ports": [8443], "private": False}]
    assert sd.read().generation == 2
    # ... and the guard the resumed bottle runs with is given them (not only the grants file).
    policy = json.loads((sd.path / "guard" / "policy.json").read_text())
    assert {"host": "granted.example", "ports": [8443]}.items() <= policy["allow"][-1].items()


def test_grants_reach_pipelock_across_resume(project: Path) -> None:
    manifest = project / "claude-bottle.toml"
    text = manifest.read_text().replace("[bottles.default.egress]", '[bottles.default.egress]\nengine = "pipelock"', 1)
    manifest.write_text(text)
    trust_file(manifest, home=bottle_home())
    assert main(["start", "plain", "--detach"]) == 0
    (sd,) = list_state_dirs()
    assert main(["grant", sd.slug, "--egress", "granted.example:8443"]) == 0
    assert main(["stop", sd.slug]) == 0
    assert main(["resume", sd.slug, "--detach"]) == 0
    assert "granted.example" in (sd.path / "guard" / "pipelock.yaml").read_text()


def test_ls_notices_an_agent_that_exited(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["start", "plain", "--detach"]) == 0
    (sd,) = list_state_dirs()
    FakeBackend.live[sd.slug] = "exited (137)"
    capsys.readouterr()
    assert main(["ls", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "crashed" and row["preserved"] == "crash"
    assert sd.read().error == "agent container exited (137)"


# -- the Docker backend's start, on a fake engine ------------------------------------------------------
DOCKER = """
log = os.environ["FAKE_DOCKER_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["network", "inspect"]:
    print(sys.argv[-1])
"""


def test_docker_start_writes_policy_with_grants_secrets_and_the_project(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_exe: Callable[[str, str], Path]
) -> None:
    from claude_bottle.backend.docker.backend import DockerBottleBackend
    from claude_bottle.bottle.state import StateDir
    from claude_bottle.manifest import load_manifest

    fake_exe("docker", DOCKER)
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(tmp_path / "docker.log"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-" + "k" * 40)
    m = load_manifest(project / "claude-bottle.toml")
    sd = StateDir("plain-abcde")
    sd.create()
    (sd.path / "grants.json").write_text(json.dumps({"egress": [{"host": "granted.example", "ports": [8443]}]}))
    from claude_bottle.bottle import Bottle
    from claude_bottle.guard_inputs.inputs import prepare_guard

    bottle = dataclasses.replace(Bottle.new(m, "plain", backend="docker"), slug=sd.slug, state=sd)
    guard = prepare_guard(
        sd, bottle.spec, base=bottle.base, roots=bottle.paths.roots, ca_certs=None, ids=bottle.ids, environ=os.environ
    )
    backend = DockerBottleBackend()
    plan = backend.plan(bottle=bottle)
    backend.start(plan=plan, images={"agent": "a:1", "guard": "g:1"}, guard=guard, progress=lambda _l: None)
    policy = json.loads((sd.path / "guard" / "policy.json").read_text())
    assert [r["host"] for r in policy["allow"]] == ["api.example.com", "granted.example"]
    secrets = sd.path / "guard" / "secrets.json"
    assert oct(secrets.stat().st_mode & 0o777) == "0o600"
    assert json.loads(secrets.read_text())["routes"]["anthropic"]["value"] == "sk-ant-api03-" + "k" * 40
    doc = json.loads((sd.path / "compose.json").read_text())
    assert "sk-ant" not in json.dumps(doc)  # the key is in the guard's secrets file only
    calls = [json.loads(x) for x in (tmp_path / "docker.log").read_text().splitlines()]
    assert any(c[:1] == ["compose"] and "up" in c for c in calls)


def test_the_terminal_env_is_checked_before_it_reaches_the_bottle() -> None:
    from claude_bottle.bottle.claude_code import terminal_env

    assert terminal_env({"TERM": "screen-256color"}) == {"TERM": "screen-256color"}
    assert terminal_env({}) == {"TERM": "xterm-256color"}
    assert terminal_env({"TERM": "dumb"}) == {"TERM": "xterm-256color"}
    assert terminal_env({"TERM": "x;rm -rf /", "COLORTERM": "$(id)"}) == {"TERM": "xterm-256color"}
    assert terminal_env({"TERM": "xterm", "COLORTERM": "24bit"}) == {"TERM": "xterm", "COLORTERM": "24bit"}


# -- resume, exactly ----------------------------------------------------------------------------------
def test_resume_refuses_a_bottle_that_runs(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["start", "plain", "--detach"]) == 0
    (sd,) = list_state_dirs()
    capsys.readouterr()
    assert main(["resume", sd.slug, "--detach"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: {sd.slug} is running: `claude-bottle attach {sd.slug}`, or stop it first"
    sd.update(status="creating", owner_pid=os.getpid(), owner_started=None)  # a start this process owns
    assert main(["resume", sd.slug, "--detach"]) == 1
    FakeBackend.live.pop(sd.slug)  # the engine says it is gone: a record that says running is stale
    sd.update(status="running")
    assert main(["resume", sd.slug, "--detach"]) == 0
    assert sd.read().generation == 2


def test_resume_takes_ownership_clears_a_crash_and_keeps_a_keep(project: Path) -> None:
    assert main(["start", "plain", "--detach"]) == 0
    (sd,) = list_state_dirs()
    assert main(["stop", sd.slug]) == 0
    sd.update(owner_pid=1, owner_started=1.0, error="resume failed: earlier")
    for mark, stays in (("crash", False), ("capability-block", False), ("keep", True)):
        sd.preserve(mark)
        assert main(["resume", sd.slug, "--detach"]) == 0
        record = sd.read()
        assert (record.status, record.owner_pid, record.error) == ("running", os.getpid(), None)
        assert record.owner_started is not None and record.owner_started > 1.0
        assert (sd.preserved() == mark) is stays, mark
        assert main(["stop", sd.slug]) == 0
        sd.preserve_path.unlink(missing_ok=True)
    assert "stop" in FakeBackend.calls


def test_resume_checks_the_paths_again(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["start", "plain", "--detach"]) == 0
    (sd,) = list_state_dirs()
    assert main(["stop", sd.slug]) == 0
    moved = project.with_name("moved")
    project.rename(moved)
    capsys.readouterr()
    assert main(["resume", sd.slug, "--detach"]) == 1
    assert f"workspace {project} of {sd.slug} no longer exists: restore it to resume" in capsys.readouterr().err
    moved.rename(project)
    (project / "link").symlink_to("/etc")  # a link planted in the workspace is refused as a mount source later
    assert main(["resume", sd.slug, "--detach"]) == 0


def test_operator_lines_are_chained_and_exact(project: Path) -> None:
    from datetime import datetime

    assert main(["start", "plain", "--detach"]) == 0
    (sd,) = list_state_dirs()
    assert main(["grant", sd.slug, "--egress", "a.example"]) == 0
    line = json.loads(sd.audit_path.read_text().splitlines()[-1])
    assert {k: v for k, v in line.items() if k not in ("time", "prev")} == {
        "bottle": sd.slug, "kind": "operator", "action": "grant", "egress": ["a.example"], "decision": "grant",
        "reason": f"claude-bottle grant by uid {os.getuid()}",
    }  # fmt: skip
    assert datetime.fromisoformat(line["time"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert len(line["time"].split(".")[1]) == len("000+00:00")  # milliseconds


def test_ran_with_hashes_what_the_run_started_with(project: Path) -> None:
    import hashlib

    assert main(["start", "plain", "--detach"]) == 0
    (sd,) = list_state_dirs()
    record = sd.read()
    spec = json.dumps(record.manifest["bottle"], sort_keys=True).encode()
    assert record.ran_with["bottle spec"] == hashlib.sha256(spec).hexdigest()
    assert record.ran_with["manifest"] == hashlib.sha256((project / "claude-bottle.toml").read_bytes()).hexdigest()
    assert record.ran_with["policy"] == hashlib.sha256((sd.path / "guard" / "policy.json").read_bytes()).hexdigest()
