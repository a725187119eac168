"""A Docker bottle on a remote engine (backend/docker/remote.py): nothing of this machine's is bound, what
travels in is owned as it must be, what comes home is judged member by member, and `ls` and `cleanup`
visit every engine a bottle was started on, naming one that does not answer."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from claude_bottle import engine
from claude_bottle.backend.docker import remote
from claude_bottle.backend.docker.backend import DockerBottleBackend
from claude_bottle.bottle import Bottle
from claude_bottle.bottle.state import BottleRecord, StateDir
from claude_bottle.errors import BottleError
from claude_bottle.hostfs.unpack import unpack
from claude_bottle.identity import RuntimeIds
from claude_bottle.manifest import parse_manifest
from claude_bottle.work import upkeep

from .test_compose import MANIFEST, render, workspace

FAR = '{"name": "far", "endpoint": "tcp://10.9.9.9:2375"}'


@pytest.mark.parametrize("guard_engine", ["guard", "pipelock"])
def test_a_remote_bottle_binds_nothing_of_this_machine(tmp_path: Path, guard_engine: str) -> None:
    text = MANIFEST.replace('allow = ["api.example.com"]', 'allow = ["api.example.com"]\nengine = "pipelock"')
    doc = render(tmp_path, text if guard_engine == "pipelock" else MANIFEST, remote=True)
    mounts = [m for svc in doc["services"].values() for m in svc["volumes"]]
    assert mounts and {m["type"] for m in mounts} == {"volume"}
    assert all(m["source"].startswith("claude-bottle-claude-abcde-") for m in mounts)
    # The volumes are the bottle's own, made and filled before Compose runs (external to it).
    assert doc["volumes"] == {m["source"]: {"name": m["source"], "external": True} for m in mounts}
    agent = {m["target"]: m for m in doc["services"]["agent"]["volumes"]}
    assert agent["/workspace"]["source"].endswith("-workspace") and "read_only" not in agent["/workspace"]
    assert agent["/bottle-run"]["read_only"] is True
    assert "/bottle-run/agent" not in agent  # nothing to report: no host path can be swapped
    assert doc["services"]["agent"]["environment"]["BOTTLE_VERIFY"] == ""
    guard = {m["target"]: m for m in doc["services"]["egress"]["volumes"]}
    conf = "/etc/pipelock" if guard_engine == "pipelock" else "/etc/claude-bottle"
    assert guard[conf]["read_only"] is True and guard[conf]["source"].endswith("-guard")
    if guard_engine == "guard":
        assert guard["/var/log/claude-bottle"]["source"].endswith("-log")
        # Honeytokens travel as Compose configs: copied in through the API, root's and read-only.
        (cfg,) = doc["services"]["agent"]["configs"]
        assert cfg == {"source": "honey0", "target": "/home/claude/.npmrc", "mode": 0o444}
        assert doc["configs"]["honey0"]["content"].startswith("//registry.npmjs.org/")


def test_a_read_write_mount_cannot_reach_a_remote_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_exe: Callable[[str, str], Path]
) -> None:
    calls = fake_exe("docker", "open(os.environ['LOG'], 'a').write(' '.join(sys.argv[1:]) + '\\n')")
    monkeypatch.setenv("LOG", str(tmp_path / "calls"))
    data = tmp_path / "data"
    data.mkdir()
    ws = workspace(tmp_path)
    text = MANIFEST.replace(
        "[bottles.default.resources]",
        f'mounts = [{{ host = "{data}", guest = "/data", mode = "rw" }}]\n[bottles.default.resources]',
    )
    (ws / "claude-bottle.toml").write_text(text + 'workspace = "."\n')
    m = parse_manifest((ws / "claude-bottle.toml").read_text(), path=ws / "claude-bottle.toml")
    bottle = Bottle.new(m, "claude", backend="docker")
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.9.9.9:2375")
    with pytest.raises(BottleError, match=r'^mount /data: a read-write mount .*mode = "ro"'):
        DockerBottleBackend().plan(bottle=bottle)
    assert not (tmp_path / "calls").exists()  # refused before any engine call
    del calls
    # Read-only, it is copied in: planned on that engine, and named so.
    m2 = parse_manifest(
        text.replace('mode = "rw"', 'mode = "ro"') + 'workspace = "."\n', path=ws / "claude-bottle.toml"
    )
    plan = DockerBottleBackend().plan(bottle=Bottle.new(m2, "claude", backend="docker"))
    assert "on the remote engine DOCKER_HOST (tcp://10.9.9.9:2375)" in plan.line()


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def _info(name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info


def test_what_comes_home_cannot_land_outside_or_carry_what_it_should_not(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    stream = _tar(
        [
            (_info("workspace", tarfile.DIRTYPE, mode=0o755), None),
            (_info("workspace/ok.txt"), b"fine\n"),
            (_info("workspace/suid", mode=0o4755), b"#!/bin/sh\n"),
            (_info("workspace/evil", tarfile.SYMTYPE, link="/etc/passwd"), None),  # kept as a link
            (_info("workspace/up", tarfile.SYMTYPE, link=str(outside)), None),
            (_info("workspace/up/planted.txt"), b"through the link\n"),  # refused: it would land outside
            (_info("../escaped.txt"), b"x"),
            (_info("/abs.txt"), b"x"),
            (_info("workspace/pipe", tarfile.FIFOTYPE), None),
            (_info("workspace/dev", tarfile.CHRTYPE), None),
            (_info("workspace/hard", tarfile.LNKTYPE, link="/etc/shadow"), None),
        ]
    )
    dest = tmp_path / "in"
    skipped = unpack(stream, dest).skipped
    ws = dest / "workspace"
    assert (ws / "ok.txt").read_text() == "fine\n"
    assert (ws / "suid").stat().st_mode & 0o7000 == 0
    assert (ws / "evil").is_symlink() and (ws / "evil").readlink() == Path("/etc/passwd")
    assert list(outside.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()
    assert not (dest / "abs.txt").exists()
    assert sorted(skipped) == sorted(
        ["workspace/up/planted.txt", "../escaped.txt", "/abs.txt", "workspace/pipe", "workspace/dev", "workspace/hard"]
    )
    assert not (ws / "pipe").exists() and not (ws / "dev").exists() and not (ws / "hard").exists()


def test_what_travels_in_is_owned_as_each_container_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guard_dir, home, ws = tmp_path / "guard", tmp_path / "home", tmp_path / "ws"
    for d in (guard_dir, home, ws):
        d.mkdir()
    (guard_dir / "policy.json").write_text("{}")
    (home / "settings.json").write_text("{}")
    (ws / "code.py").write_text("print(1)\n")
    (ws / "link").symlink_to("code.py")
    import os

    os.mkfifo(ws / "fifo")
    audit = tmp_path / "egress.jsonl"
    audit.write_text('{"kind":"start"}\n')
    ids = RuntimeIds(1000, 1001, 10001, 10002)
    volumes = remote.volumes_of(guard_dir=guard_dir, claude_home=home, workspace=ws, mounts=[], ids=ids)
    made: list[list[str]] = []
    sent: list[tuple[list[str], bytes]] = []

    def docker(*args: str, **_kw: object) -> Any:
        made.append(list(args))
        return engine.process.Result(tuple(args), 0, "", "")

    def pipe_in(args: list[str], write: Callable[[IO[bytes]], None], **_kw: object) -> Any:
        buf = io.BytesIO()
        write(buf)
        sent.append((list(args), buf.getvalue()))
        return engine.process.Result(tuple(args), 0, "", "")

    monkeypatch.setattr(engine, "docker", docker)
    monkeypatch.setattr(engine, "pipe_in", pipe_in)
    remote.fill_volumes(slug="claude-abcde", image="guard:y", labels={"k": "v"}, volumes=volumes, log_files=[audit])
    # Each volume made afresh (a stale one from a crash is never trusted), labelled as the bottle's.
    names = [v.name("claude-abcde") for v in volumes]
    assert [a for a in made if a[:2] == ["volume", "rm"]] == [["volume", "rm", "-f", *names]]  # one call
    assert [a[-1] for a in made if a[:2] == ["volume", "create"]] == names
    ((argv, data),) = sent
    # The helper: no network, no capability but to set owners, its name the bottle's (cleanup finds it).
    assert argv[argv.index("--network") + 1] == "none" and "no-new-privileges:true" in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--name") + 1].startswith("claude-bottle-claude-abcde-helper-")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name: m for m in tar.getmembers()}
    assert (got["guard"].uid, got["guard"].mode) == (10001, 0o700)
    assert (got["guard/policy.json"].uid, got["guard/policy.json"].gid) == (10001, 10002)
    assert (got["log/egress.jsonl"].uid, got["log/egress.jsonl"].mode) == (10001, 0o600)
    assert (got["run"].uid, got["run"].mode) == (0, 0o777)
    assert (got["workspace/code.py"].uid, got["workspace/code.py"].gid) == (1000, 1001)
    assert got["workspace/link"].issym() and got["home/settings.json"].uid == 1000
    assert "workspace/fifo" not in got  # a pipe of this machine never travels


def _record(state: StateDir, status: str = "running") -> None:
    state.create()
    state.write(BottleRecord(slug=state.slug, agent="claude", bottle="default", backend="docker", status=status))


FAKE = """
if os.environ.get("DOCKER_CONTEXT") == "far":
    sys.stderr.write("Cannot connect to the Docker daemon at tcp://10.9.9.9:2375. Is the docker daemon running?\\n")
    sys.exit(1)
sys.stdout.write("[]" if sys.argv[1:3] == ["compose", "ls"] else "")
"""


def test_an_engine_that_does_not_answer_is_named_and_its_bottles_kept(
    fake_exe: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_exe("docker", FAKE)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    far = StateDir("claude-far01")
    _record(far)
    (far.path / "engine.json").write_text(FAR)
    here = StateDir("claude-here1")
    _record(here, status="stopped")
    st = DockerBottleBackend().statuses()
    assert st["claude-far01"].status == "unknown (engine far at tcp://10.9.9.9:2375 does not answer)"
    plan = DockerBottleBackend().prepare_cleanup()
    assert (
        "engine far (tcp://10.9.9.9:2375) does not answer: its bottles (claude-far01) are left as they are"
        in (plan.lines())[1]
    )
    assert [s.slug for s in plan.kept] == ["claude-far01"]  # not judged an orphan
    assert [s.slug for s in plan.state_dirs] == ["claude-here1"]


def test_cleanup_brings_a_remote_bottles_work_home_before_its_volumes_go(
    fake_exe: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    vol = "\n".join(
        json.dumps({"Name": f"claude-bottle-claude-far01-{part}", "Labels": "claude-bottle.slug=claude-far01"})
        for part in ("guard", "workspace")
    )
    fake_exe(
        "docker",
        f"""
open(os.environ["LOG"], "a").write(os.environ.get("DOCKER_CONTEXT", "-") + " " + " ".join(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["compose", "ls"]:
    sys.stdout.write("[]")
elif sys.argv[1:3] == ["volume", "ls"] and os.environ.get("DOCKER_CONTEXT") == "far":
    sys.stdout.write({vol!r} + "\\n")
""",
    )
    log = tmp_path / "calls"
    monkeypatch.setenv("LOG", str(log))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    far = StateDir("claude-far01")
    _record(far, status="stopped")
    (far.path / "engine.json").write_text(FAR)
    backend = DockerBottleBackend()
    plan = backend.prepare_cleanup()
    lines = plan.lines()
    assert "--- docker engine far (tcp://10.9.9.9:2375) ---" in lines
    assert "volume: claude-bottle-claude-far01-workspace -> its files brought home, then docker volume rm" in lines
    assert "volume: claude-bottle-claude-far01-guard -> its files brought home, then docker volume rm" in lines
    order: list[str] = []
    monkeypatch.setattr(DockerBottleBackend, "bring_home", lambda _self, state: order.append(f"home {state.slug}"))
    reports: list[str] = []
    assert upkeep.run_cleanup([plan], reports.append) == []  # the backend's removals, then the orphan state dir
    assert not far.path.exists()
    removed = [ln for ln in log.read_text().splitlines() if " volume rm " in ln]
    assert removed == ["far volume rm -f claude-bottle-claude-far01-guard claude-bottle-claude-far01-workspace"]
    assert order == ["home claude-far01"] and "brought claude-far01's log, transcripts and workspace home" in reports

    # When they cannot come home, the volumes stay, and the failure says so.
    def fail(state: StateDir) -> None:
        raise BottleError("the engine went away")

    monkeypatch.setattr(DockerBottleBackend, "bring_home", lambda _self, state: fail(state))
    _record(far, status="stopped")  # (the run above removed it: an orphan once its files were home)
    (far.path / "engine.json").write_text(FAR)
    log.write_text("")
    failures = upkeep.run_cleanup([backend.prepare_cleanup()], reports.append)
    assert failures == [
        "volume claude-bottle-claude-far01-workspace: kept, its files could not be brought home (the engine went away)"
    ]
    # The work stays; the guard's volume (its secrets) goes in any case.
    assert [ln for ln in log.read_text().splitlines() if " volume rm " in ln] == [
        "far volume rm -f claude-bottle-claude-far01-guard"
    ]


def test_the_engine_is_chosen_by_flag_then_manifest_then_environment_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_exe: Callable[[str, str], Path]
) -> None:
    fake_exe(
        "docker",
        """
if sys.argv[1:3] == ["context", "inspect"]:
    sys.stdout.write({"build": "ssh://me@build", "ci": "tcp://10.0.0.9:2376"}.get(sys.argv[3], "") + "\\n")
    sys.exit(0 if sys.argv[3] in ("build", "ci") else 1)
""",
    )
    ws = workspace(tmp_path)
    text = MANIFEST.replace("[bottles.default.resources]", 'context = "build"\n[bottles.default.resources]')
    m = parse_manifest(text + 'workspace = "."\n', path=ws / "claude-bottle.toml")
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.9.9.9:2375")
    bottle = Bottle.new(m, "claude", backend="docker")
    assert "on the remote engine build (ssh://me@build)" in DockerBottleBackend().plan(bottle=bottle).line()
    asked = dataclasses.replace(bottle, context="ci")  # `start --context ci`
    assert "on the remote engine ci (tcp://10.0.0.9:2376)" in DockerBottleBackend().plan(bottle=asked).line()
    # A bottle that ran goes back to its engine, whatever the flag, manifest or environment say now.
    bottle.state.create()
    (bottle.state.path / "engine.json").write_text(FAR)
    assert "on the remote engine far (tcp://10.9.9.9:2375)" in DockerBottleBackend().plan(bottle=bottle).line()
    with pytest.raises(Exception, match="context"):
        parse_manifest(text.replace('"build"', '"-H tcp://x"'), path=ws / "claude-bottle.toml")


def test_the_operators_own_lines_survive_the_trip_home(tmp_path: Path) -> None:
    from claude_bottle.guard.audit import append_chained, chained_after, verify_chain

    log = tmp_path / "egress.jsonl"
    guard = b""
    for i in range(2):
        guard += chained_after(guard, {"kind": "request", "host": f"h{i}.test", "decision": "allow"})
    log.write_bytes(guard)
    append_chained(log, {"kind": "operator", "action": "grant", "egress": ["x.test:443"]})  # the CLI, here
    more = guard + chained_after(guard, {"kind": "request", "host": "x.test", "decision": "allow"})
    merged = remote.merge_log(log, more)
    log.write_bytes(merged)
    kinds = [json.loads(x)["kind"] for x in merged.splitlines()]
    assert kinds == ["request", "request", "request", "operator"]  # the grant kept, after the guard's lines
    assert verify_chain(log)[2] == []  # and the whole chain holds
    # Again: still one operator line, not two.
    again = remote.merge_log(log, more + chained_after(more, {"kind": "request", "host": "y.test"}))
    assert [json.loads(x)["kind"] for x in again.splitlines()].count("operator") == 1
    # A copy that does not continue this one (lines lost on the engine): taken, and this one kept aside.
    assert remote.merge_log(log, guard[: len(guard) // 2]) == guard[: len(guard) // 2]
    assert (tmp_path / "egress.jsonl.diverged-1").read_bytes() == merged


def test_a_folder_spelled_as_a_link_is_never_written_through(tmp_path: Path) -> None:
    """What a case-insensitive disk would resolve through a link the archive made is refused; a link named
    absolutely is refused too; and a link already on disk is never written through."""
    outside = tmp_path / "outside"
    outside.mkdir()
    stream = _tar(
        [
            (_info("ws", tarfile.DIRTYPE, mode=0o755), None),
            (_info("ws/a", tarfile.SYMTYPE, link=str(outside)), None),
            (_info("ws/A/planted.txt"), b"x"),
            (_info("ws/\u00c5", tarfile.SYMTYPE, link=str(outside)), None),
            (_info("ws/\u0041\u030a/x.txt"), b"x"),  # the same name, decomposed
            (_info("/abs-link", tarfile.SYMTYPE, link=str(outside)), None),
        ]
    )
    skipped = unpack(stream, tmp_path / "in").skipped
    assert sorted(skipped) == sorted(["ws/A/planted.txt", "ws/\u0041\u030a/x.txt", "/abs-link"])
    assert list(outside.iterdir()) == []
    # Even without the spelling check (a name this archive did not make a link, found on disk as one),
    # the folder is opened without following it.
    (tmp_path / "in2").mkdir()
    (tmp_path / "in2" / "ws").symlink_to(outside)
    from claude_bottle.hostfs import unpack as unpack_mod

    root = os.open(tmp_path / "in2", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError):
            unpack_mod._Folders(root, 10).enter(["ws"])
    finally:
        os.close(root)
    assert list(outside.iterdir()) == []


def test_a_transfer_that_floods_its_error_output_or_stalls_cannot_hang(
    fake_exe: Callable[[str, str], Path],
) -> None:
    fake_exe(
        "docker",
        """
if sys.argv[1] == "flood":
    sys.stderr.write("tar: socket ignored\\n" * 20000)
    sys.stderr.flush()
    sys.stdout.write("done")
else:
    import time
    time.sleep(30)
""",
    )
    got: list[bytes] = []
    result = engine.pipe_out(["flood"], lambda f: got.append(f.read()), timeout=30)
    assert result.ok and got == [b"done"] and len(result.stderr) <= engine.STDERR_KEPT
    result = engine.pipe_out(["stall"], lambda f: got.append(f.read()), timeout=0.5)
    assert not result.ok and "did not finish within 0s: stopped" in result.stderr


def test_a_stop_whose_files_cannot_come_home_still_stops_and_keeps_the_work(
    fake_exe: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    monkeypatch.setenv("LOG", str(log))
    fake_exe("docker", "open(os.environ['LOG'], 'a').write(' '.join(sys.argv[1:]) + '\\n')")
    state = StateDir("claude-far01")
    _record(state)
    state.update(images={"guard": "guard:y"})
    (state.path / "engine.json").write_text(FAR)
    (state.path / "compose.json").write_text("{}")

    def broken(**_kw: object) -> list[str]:
        raise BottleError("the engine went away")

    monkeypatch.setattr(remote, "bring_home", broken)
    DockerBottleBackend().stop(state=state)
    calls = log.read_text().splitlines()
    assert calls[0] == "version --format {{.Server.APIVersion}}"  # asked first, briefly
    assert calls[1].startswith("compose -p claude-bottle-claude-far01") and " stop --timeout 1" in calls[1]
    assert any(" down --volumes" in c for c in calls)
    assert calls[-1] == "volume rm -f " + " ".join(
        f"claude-bottle-claude-far01-{p}" for p in ("guard", "run")
    )  # its secrets' volume gone; its work kept
    assert (state.preserved() or "").startswith("files still on engine far (tcp://10.9.9.9:2375)")
    # The next trip home (`pull`) finishes the stop: the work's volumes go, the bottle is let go.
    state.update(status="stopped")
    monkeypatch.setattr(remote, "bring_home", lambda **_kw: [])
    DockerBottleBackend().bring_home(state)
    assert log.read_text().splitlines()[-1] == "volume rm -f " + " ".join(
        f"claude-bottle-claude-far01-{p}" for p in remote.DATA_PARTS
    )
    assert state.preserved() is None


def test_on_a_remote_engine_every_control_path_is_judged_when_the_work_comes_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from claude_bottle.git.settle import settle_bottle

    ws = workspace(tmp_path)
    (ws / ".git").mkdir()
    m = parse_manifest(MANIFEST + 'workspace = "."\n', path=ws / "claude-bottle.toml")
    bottle = Bottle.new(m, "claude", backend="docker", workspace_mode="mount")
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.9.9.9:2375")
    assert DockerBottleBackend().read_only_paths(bottle) == []  # nothing is mounted read-only there
    monkeypatch.delenv("DOCKER_HOST")
    assert DockerBottleBackend().read_only_paths(bottle) == list(bottle.protected) != []  # here, they are
    state = StateDir("claude-far02")
    _record(state, status="stopped")
    state.update(run_started=time.time() - 5, workspace=str(ws))
    hooks = state.path / "workspace" / ".git" / "hooks"
    hooks.mkdir(parents=True)
    (hooks / "post-checkout").write_text("#!/bin/sh\ncurl evil\n")
    (hooks / "post-checkout").chmod(0o755)
    notes: list[str] = []
    settle_bottle(state, notes.append)
    assert not (hooks / "post-checkout").exists()
    assert any("post-checkout" in n for n in notes) and state.preserved() == "git-quarantine"


def test_an_engine_that_hangs_costs_seconds_not_minutes(
    fake_exe: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from claude_bottle.backend.docker import backend as docker_backend

    fake_exe(
        "docker",
        """
if os.environ.get("DOCKER_CONTEXT") == "far":
    import time
    time.sleep(30)  # a black-holed address: no answer, no refusal
sys.stdout.write("[]" if sys.argv[1:3] == ["compose", "ls"] else "")
""",
    )
    monkeypatch.setattr(docker_backend, "ANSWER_TIMEOUT", 0.5)
    far = StateDir("claude-far01")
    _record(far)
    (far.path / "engine.json").write_text(FAR)
    t0 = time.monotonic()
    st = DockerBottleBackend().statuses()
    assert st["claude-far01"].status.startswith("unknown (engine far")
    assert time.monotonic() - t0 < 10


def test_a_bottle_whose_engine_is_gone_for_good_can_be_forgotten(
    fake_exe: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from claude_bottle.cli import main

    fake_exe("docker", FAKE)
    far = StateDir("claude-far01")
    _record(far)
    (far.path / "engine.json").write_text(FAR)
    (far.path / "guard").mkdir()
    (far.path / "guard" / "secrets.json").write_text('{"routes": {}}')
    assert main(["stop", "claude-far01"]) == 3
    err = capsys.readouterr().err
    assert "Docker engine not reachable at tcp://10.9.9.9:2375 (context far)" in err
    assert "`claude-bottle stop claude-far01 --forget` forgets the bottle here" in err
    assert far.exists()
    far.preserve("kept by the operator")
    assert main(["stop", "claude-far01", "--forget"]) == 1
    assert "keep claude-far01 --release" in capsys.readouterr().err and far.exists()
    far.preserve_path.unlink()
    assert main(["stop", "claude-far01", "--forget"]) == 0
    assert not far.exists()


def test_a_trip_home_over_budget_is_cut_off_kept_aside_and_not_carried_again(
    fake_exe: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The work's volume streams without end: the stop still stops, the log (its own trip) comes home, the
    trip of the work is cut off at its budget and kept aside, the bottle is preserved with the reason and its
    work's volumes kept; then no later trip carries it on its own, and it does not start from the older copy."""
    from claude_bottle.backend import homecoming
    from claude_bottle.hostfs.unpack import Limits

    log = tmp_path / "calls"
    monkeypatch.setenv("LOG", str(log))
    fake_exe(
        "docker",
        """
import io, tarfile
open(os.environ["LOG"], "a").write(" ".join(sys.argv[1:]) + "\\n")
a = sys.argv[1:]
if a[:2] == ["volume", "ls"]:
    print("\\n".join(f"claude-bottle-claude-far01-{p}" for p in ("log", "home", "workspace")))
elif a[:1] == ["run"] and a[-1] == "log":
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        body = b'{"kind":"from-the-engine"}\\n'
        info = tarfile.TarInfo("log/egress.jsonl"); info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    sys.stdout.buffer.write(buf.getvalue())
elif a[:1] == ["run"]:
    info = tarfile.TarInfo("home/big.bin"); info.size = 2**40
    sys.stdout.buffer.write(info.tobuf())
    while True:
        sys.stdout.buffer.write(b"\\0" * 65536)
""",
    )
    monkeypatch.setattr(homecoming, "LIMITS", Limits(bytes=1024 * 1024))
    state = StateDir("claude-far01")
    _record(state)
    state.update(images={"guard": "guard:y"})
    (state.path / "engine.json").write_text(FAR)
    (state.path / "compose.json").write_text("{}")
    state.claude_home.mkdir()
    (state.claude_home / "kept.txt").write_text("the last copy\n")
    DockerBottleBackend().stop(state=state)
    why = state.preserved() or ""
    assert why.startswith("too much to bring home: from engine far (tcp://10.9.9.9:2375): more than 1.0 MiB")
    assert "\n" not in why and "'home/big.bin'" in why
    calls = log.read_text().splitlines()
    assert any(" down --volumes" in c for c in calls)  # stopped and removed all the same
    assert calls[-1] == "volume rm -f claude-bottle-claude-far01-guard claude-bottle-claude-far01-run"  # work kept
    assert (state.path / "egress.jsonl").read_text() == '{"kind":"from-the-engine"}\n'
    assert (state.claude_home / "kept.txt").read_text() == "the last copy\n"  # not replaced by a part
    assert (state.path / "home-partial").is_dir() and "# stopped: more than" in state.home_skipped.read_text()
    # Stopped: nothing travels on its own again (verify, requests, cleanup get the reason at once).
    state.update(status="stopped")
    before = len(log.read_text().splitlines())
    with pytest.raises(homecoming.TripCut, match=r"^too much to bring home"):
        DockerBottleBackend().bring_home(state)
    assert len(log.read_text().splitlines()) == before
    with pytest.raises(BottleError, match=f"keep {state.slug} --release"):
        homecoming.refuse_start(state)


def test_what_comes_home_holds_no_repository_and_is_settled_on_every_trip(
    fake_exe: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 21 (finding 6): a trip home for `verify`, `report`, `logs` or `requests` settles the copy for git
    before it is put in place, as `stop` and `pull` did; and no trip writes a HEAD git would accept, or a
    `.git` that is a file or a link, into the operator's state dir."""
    log = tmp_path / "calls"
    monkeypatch.setenv("LOG", str(log))
    fake_exe(
        "docker",
        """
import io, tarfile
a = sys.argv[1:]
if a[:2] == ["volume", "ls"]:
    print("\\n".join(f"claude-bottle-claude-far03-{p}" for p in ("log", "home", "workspace")))
elif a[:1] == ["run"] and a[-1] == "log":
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w").close()
    sys.stdout.buffer.write(buf.getvalue())
elif a[:1] == ["run"]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name, body=b"", kind=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(name); info.type = kind; info.linkname = link; info.size = len(body)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(body))
        add("home", kind=tarfile.DIRTYPE)
        add("workspace", kind=tarfile.DIRTYPE)
        add("workspace/.git/hooks/post-checkout", b"#!/bin/sh\\ncurl evil\\n")
        add("workspace/.git/HEAD", b"ref: refs/heads/claude-bottle/claude-far03\\n")
        add("workspace/src/HEAD", b"0123456789abcdef0123456789abcdef01234567\\n")
        add("workspace/data/HEAD", kind=tarfile.SYMTYPE, link="refs/heads/main")
        add("workspace/sub/.git", b"gitdir: /home/op/project/.git\\n")
        add("workspace/notes/HEAD", b"# the head of the list\\n" + b"x" * 500)
    sys.stdout.buffer.write(buf.getvalue())
""",
    )
    state = StateDir("claude-far03")
    _record(state, status="running")
    state.update(images={"guard": "guard:y"})
    (state.path / "engine.json").write_text(FAR)
    DockerBottleBackend().bring_home(state)
    home = state.home_workspace
    assert not (home / ".git" / "HEAD").exists() and not (home / "src" / "HEAD").exists()
    assert not (home / "data" / "HEAD").is_symlink() and not (home / "sub" / ".git").exists()
    assert (home / "notes" / "HEAD").read_bytes() == b"# the head of the list\n" + b"x" * 500  # whole, kept
    assert not (home / ".git" / "hooks" / "post-checkout").exists()  # settled on this trip, not only at stop
    assert state.preserved() == "git-quarantine"
    refused = state.home_skipped.read_text()
    for name in ("workspace/.git/HEAD", "workspace/src/HEAD", "workspace/data/HEAD", "workspace/sub/.git"):
        assert name in refused, refused
