"""The CLI end to end in-process through main(argv), on a fake backend."""

from __future__ import annotations

import json
import re
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from claude_bottle.backend import _BACKENDS
from claude_bottle.bottle.state import bottle_home, list_state_dirs
from claude_bottle.cli import main
from claude_bottle.errors import BottleError
from claude_bottle.manifest.trust import trust_file

from .fakes import FakeBackend

MANIFEST = """
[bottles.default]
backend = "fake"
[bottles.default.egress]
allow = ["api.example.com"]
[agents.claude]
bottle = "default"
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
    trust_file(d / "claude-bottle.toml", home=bottle_home())  # the operator trusted it
    monkeypatch.chdir(d)
    return d


def slugs() -> list[str]:
    return [d.slug for d in list_state_dirs()]


def test_init_writes_a_valid_starter_and_refuses_to_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    text = (tmp_path / "claude-bottle.toml").read_text()
    assert "[agents.claude]" in text and "api.anthropic.com" in text
    assert main(["init"]) == 1
    assert "already exists: edit it, or pass --force" in capsys.readouterr().err
    assert main(["init", "--force"]) == 0


def test_start_detach_ls_exec_stop(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["start", "claude", "--detach", "--json"]) == 0
    slug = json.loads(capsys.readouterr().out)["slug"]
    assert slug.startswith("claude-") and slugs() == [slug]
    assert FakeBackend.calls == ["plan", "images", "start", "wait"]

    assert main(["ls", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["slug"], row["agent"], row["backend"], row["status"]) == (slug, "claude", "fake", "running")

    FakeBackend.exec_rc = 7
    assert main(["exec", slug[:9], "--", "false", "x"]) == 7
    assert FakeBackend.calls[-1] == "exec false x"

    assert main(["stop", slug]) == 0
    assert main(["ls", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.split("\n", 1)[1] if not out.startswith("[") else out)[0]["status"] == "stopped"
    assert main(["stop", slug, "--rm"]) == 0
    assert slugs() == []


def test_headless_run_that_fails_is_preserved_as_crashed(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    FakeBackend.exec_rc = 3
    assert main(["start", "claude", "--prompt", "do it"]) == 3
    run = FakeBackend.calls[-2]
    assert run.startswith("exec claude --dangerously-skip-permissions --append-system-prompt You run in a sealed")
    assert " --session-id " in run and run.endswith(" -p do it")
    assert FakeBackend.calls[-1] == "stop"
    (sd,) = list_state_dirs()
    record = sd.read()
    assert (record.status, sd.preserved(), record.attached_pid) == ("crashed", "crash", None)
    assert record.error == "claude exited with 3"
    assert "resume" in capsys.readouterr().err


def test_headless_run_that_succeeds_stops_the_bottle(project: Path) -> None:
    assert main(["start", "claude", "--prompt", "do it"]) == 0
    (sd,) = list_state_dirs()
    assert (sd.read().status, sd.preserved()) == ("stopped", None)


def test_resume_continues_the_recorded_session(project: Path) -> None:
    assert main(["start", "claude", "--prompt", "first"]) == 0
    (sd,) = list_state_dirs()
    session = sd.read().session_id
    assert main(["resume", sd.slug, "--prompt", "second"]) == 0
    assert FakeBackend.calls[-2].endswith(f"--resume {session} -p second")
    assert sd.read().generation == 2


def test_resume_without_a_transcript_starts_the_session_afresh(project: Path) -> None:
    assert main(["start", "claude", "--prompt", "first"]) == 0
    (sd,) = list_state_dirs()
    session = sd.read().session_id
    for transcript in (sd.claude_home / "projects").glob("*/*.jsonl"):
        transcript.unlink()  # claude never got to write one
    assert main(["resume", sd.slug, "--prompt", "second"]) == 0
    assert FakeBackend.calls[-2].endswith(f"--session-id {session} -p second")


@pytest.mark.parametrize("step", ["images", "start", "wait"])
def test_failed_start_rolls_back(project: Path, step: str, capsys: pytest.CaptureFixture[str]) -> None:
    FakeBackend.fail_at = step
    assert main(["start", "claude", "--detach"]) == 3
    assert f"fake {step} failed" in capsys.readouterr().err
    # Before the engine holds anything of the bottle there is nothing to stop, only the state dir to drop.
    assert FakeBackend.calls[-1] == ("images" if step == "images" else "stop")
    assert slugs() == [] and FakeBackend.live == {}


def test_ctrl_c_mid_start_rolls_back(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    FakeBackend.interrupt_at = "wait"
    assert main(["start", "claude", "--detach"]) == 130
    assert FakeBackend.calls[-1] == "stop" and slugs() == [] and FakeBackend.live == {}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("step", ["images", "start", "wait"])
def test_sigterm_mid_start_rolls_back_as_ctrl_c_does(project: Path, sig: int, step: str) -> None:
    FakeBackend.signal_at = (step, sig)
    before = set(Path(tempfile.gettempdir()).glob("claude-bottle-build-*"))
    assert main(["start", "claude", "--detach"]) == 128 + sig
    assert slugs() == [] and FakeBackend.live == {}
    if step != "images":
        assert FakeBackend.calls[-1] == "stop"
    assert set(Path(tempfile.gettempdir()).glob("claude-bottle-build-*")) == before
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


def test_rollback_that_cannot_remove_keeps_a_record_for_cleanup(project: Path) -> None:
    FakeBackend.fail_at = "wait"
    original_stop = FakeBackend.stop

    def broken_stop(self: FakeBackend, *, state: object) -> None:
        raise __import__("claude_bottle.errors").errors.BackendError("engine went away")

    FakeBackend.stop = broken_stop  # type: ignore[method-assign]
    try:
        assert main(["start", "claude", "--detach"]) == 3
    finally:
        FakeBackend.stop = original_stop  # type: ignore[method-assign]
    (sd,) = list_state_dirs()
    rec = sd.read()
    assert rec.status == "failed" and "engine went away" in (rec.error or "")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["start", "nobody"], 1, "no agent named 'nobody' (defined: claude)"),
        (["stop", "claude-zzzzz"], 1, "no bottle matches 'claude-zzzzz'"),
        (["exec", "x"], 1, "no command given"),
        (["start", "claude", "-d", "--backend", "nope"], 1, "unknown backend 'nope' (from --backend): choose one of"),
        (["start", "claude"], 1, "an interactive claude needs a terminal: run this from one, pass --prompt TEXT"),
        (["frobnicate"], 2, ""),
        (["start"], 2, ""),
    ],
)
def test_user_errors_are_one_line_with_exit_codes(
    project: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err
    if message:
        assert message in err
        assert err.count("\n") == 1 and err.startswith("error: ")
    assert slugs() == []


def test_bad_manifest_is_reported_with_its_path(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "claude-bottle.toml").write_text("[bottles.default]\nimage = 'x'\n")
    assert main(["start", "claude"]) == 1
    err = capsys.readouterr().err
    assert "claude-bottle.toml: bottles.default: unknown key 'image'" in err


def test_no_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["start", "claude"]) == 1
    assert "run `claude-bottle init`" in capsys.readouterr().err


def test_missing_workspace(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "claude-bottle.toml").write_text(MANIFEST + "workspace = 'nope'\n")
    assert main(["start", "claude", "--detach"]) == 1
    assert "workspace" in capsys.readouterr().err and slugs() == []


def test_env_var_selects_backend(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "claude-bottle.toml").write_text(MANIFEST.replace('backend = "fake"\n', ""))
    monkeypatch.setenv("CLAUDE_BOTTLE_BACKEND", "fake")
    assert main(["start", "claude", "--detach"]) == 1  # changed since trusted
    assert main(["trust"]) == 0
    assert main(["start", "claude", "--detach"]) == 0
    assert FakeBackend.calls[0] == "plan"


def test_help_is_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "doctor" in capsys.readouterr().out


def _unused(_: Callable[[], None]) -> None:  # pragma: no cover
    pass


def test_start_hints_at_leftovers(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from claude_bottle.bottle.state import BottleRecord, StateDir

    sd = StateDir("claude-zzzzz")
    sd.create()
    sd.write(BottleRecord(slug=sd.slug, agent="claude", bottle="default", backend="fake", status="failed"))
    assert main(["start", "claude", "--detach"]) == 0
    assert "1 leftover bottle from earlier runs; `claude-bottle cleanup` reaps them" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('mounts = [{ host = "../missing-dir", guest = "/data" }]', "mount source .*missing-dir does not exist"),
        ('ca_certs = "../no-such.crt"', "ca_certs .*no-such.crt is not a file"),
        ('[bottles.default.credentials.anthropic]\nsource = "env:CB_TEST_UNSET_KEY"', "CB_TEST_UNSET_KEY"),
        ('[bottles.default.credentials.anthropic]\nsource = "file:/nonexistent/key"', "/nonexistent/key"),
    ],
)
def test_every_check_without_the_engine_runs_before_any_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], extra: str, expected: str
) -> None:
    d = tmp_path / "proj"
    d.mkdir()
    head, _, tail = MANIFEST.partition("[bottles.default.egress]")
    text = f"{head}{extra}\n[bottles.default.egress]{tail}" if not extra.startswith("[") else f"{MANIFEST}{extra}\n"
    (d / "claude-bottle.toml").write_text(text)
    trust_file(d / "claude-bottle.toml", home=bottle_home())
    monkeypatch.chdir(d)
    assert main(["start", "claude", "--detach"]) == 1
    err = capsys.readouterr().err
    assert re.search(expected, err), err
    assert "images" not in FakeBackend.calls and slugs() == []  # refused before minutes of build, nothing left


def test_an_error_naming_an_agent_made_path_reaches_the_terminal_escaped(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21 review: an OSC 52 (clipboard) in a folder name, quoted by an error, was written raw."""
    from claude_bottle.cli import ls as ls_verb
    from claude_bottle.cli import main as cli_main

    def boom(_args: object) -> int:
        raise BottleError("the bottle's work holds e\x1b]52;c;cHduZWQ=\x07/HEAD")

    monkeypatch.setattr(ls_verb, "run", boom)
    assert cli_main(["ls"]) == 1
    said = capsys.readouterr().err
    assert "\x1b" not in said and "\x07" not in said and "HEAD" in said
