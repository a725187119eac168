"""The smolmachines backend's contract (issue 12), against a fake of the SDK surface it uses
(tests/fakesmol) and a fake `docker` (fakedocker.py), driving the real CLI and lifecycle: exactly what is
handed to the SDK (the seal), every verb, a clean failed start, cleanup across backends, a missing SDK,
and doctor's checks."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.backend.smolmachines import backend as smol_backend
from claude_bottle.backend.smolmachines import doctor, sdk
from claude_bottle.bottle.state import StateDir, bottle_home, list_state_dirs
from claude_bottle.cli import main
from claude_bottle.identity import BOTTLE_UID
from claude_bottle.manifest.trust import trust_file

from .fakedocker import SCRIPT

MANIFEST = """
[bottles.default]
backend = "smolmachines"
resources = { cpus = 1.5, memory = "2g" }
[bottles.default.egress]
allow = ["api.example.com"]
[bottles.default.credentials.anthropic]
source = "env:ANTHROPIC_API_KEY"
[agents.claude]
"""
KEY = "sk-ant-api03-" + "k" * 40


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_exe: Callable[[str, str], Path]) -> dict[str, Any]:
    fake_exe("docker", SCRIPT)
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(tmp_path / "docker.json"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setattr(smol_backend, "guard_answers", lambda url: True)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "claude-bottle.toml").write_text(MANIFEST)
    trust_file(proj / "claude-bottle.toml", home=bottle_home())
    monkeypatch.chdir(proj)
    return {"proj": proj, "docker": tmp_path / "docker.json", "smol": Path(os.environ["FAKE_SMOL_DB"])}


def docker_state(world: dict[str, Any]) -> dict[str, Any]:
    return json.loads(world["docker"].read_text()) if world["docker"].exists() else {"calls": [], "containers": []}


def smol_db(world: dict[str, Any]) -> dict[str, Any]:
    return json.loads(world["smol"].read_text()) if world["smol"].exists() else {"machines": {}, "calls": []}


def test_start_hands_the_sdk_a_sealed_machine_and_the_guard_one_loopback_address(world: dict[str, Any]) -> None:
    assert main(["start", "claude", "--detach", "--prompt", "hello"]) == 0
    (sd,) = list_state_dirs()
    (name,) = smol_db(world)["machines"]
    machine = smol_db(world)["machines"][name]
    cfg = machine["config"]
    assert name == f"claude-bottle-{sd.slug}"
    assert machine["labels"]["claude-bottle.slug"] == sd.slug and machine["labels"]["claude-bottle.backend"] == (
        "smolmachines"
    )
    assert machine["labels"]["claude-bottle.namespace"] == "claude-bottle"
    assert machine["labels"]["claude-bottle.owner-pid"] == str(os.getpid())
    assert cfg["persistent"] is True and cfg["detach"] is True
    # The seal: networking scoped to the guard's one loopback address, never opened wholesale.
    vm = json.loads((sd.path / "vm.json").read_text())
    addr = vm["address"]
    assert addr.startswith("127.") and addr != "127.0.0.1"
    assert cfg["resources"]["allow_cidrs"] == [f"{addr}/32"]
    assert not cfg["resources"]["network"] and not cfg["network"] and not cfg["resources"]["allow_hosts"]
    assert (cfg["resources"]["cpus"], cfg["resources"]["memory_mb"]) == (2, 2048)
    env = cfg["env"]
    url = f"http://{addr}:3128"
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == env["https_proxy"] == url
    assert env["ANTHROPIC_BASE_URL"] == f"{url}/anthropic"
    assert KEY not in json.dumps(smol_db(world)) and KEY not in (sd.path / "vm.json").read_text()
    assert cfg["image"].endswith(".tar") and Path(cfg["image"]).is_file()
    # Not a repository: the agent works on a copy of its own, as the bottle user (issue 21).
    assert cfg["user"] == f"{BOTTLE_UID}:{BOTTLE_UID}"
    mounts = {m["target"]: (m["source"], m["read_only"]) for m in cfg["mounts"]}
    assert mounts["/workspace"] == (str(sd.path / "copy"), False)
    assert mounts["/home/claude/.claude"] == (str(sd.claude_home), False)
    # The guard: its own container and network, published on that address only, one client admitted.
    run = next(c for c in docker_state(world)["calls"] if c[:1] == ["run"])
    assert run[run.index("--name") + 1] == f"claude-bottle-sidecars-{sd.slug}"
    assert run[run.index("--network") + 1] == f"claude-bottle-bundle-{sd.slug}"
    assert run[run.index("--publish") + 1] == f"{addr}:3128:3128/tcp"
    clients = run[run.index("--clients") + 1]
    assert clients.endswith("/32") and clients.startswith("10.")
    assert KEY not in json.dumps(run)
    # Honeytokens planted through exec (argv, not a shell line), then claude started in its tmux session.
    execs = [c for c in smol_db(world)["calls"] if c[0] == "exec"]
    assert execs[0][2][:2] == ["sh", "-c"] and any("AKIA" in a for a in execs[0][2])
    (tmux,) = [c[2] for c in execs if c[2][:3] == ["tmux", "-u", "new-session"]]
    assert "bottle-run" in tmux and tmux[-2:] == ["-p", "hello"]
    assert all(c[0] != "connect" or c[1] == name for c in smol_db(world)["calls"])


def test_the_archive_is_made_once_per_image(world: dict[str, Any]) -> None:
    assert main(["start", "claude", "--detach"]) == 0
    assert main(["start", "claude", "--detach"]) == 0
    saves = [c for c in docker_state(world)["calls"] if c[:1] == ["save"]]
    assert len(saves) == 1
    images = {m["config"]["image"] for m in smol_db(world)["machines"].values()}
    assert len(images) == 1 and Path(images.pop()).parent == bottle_home() / "cache" / "smolmachines"


def test_ls_stop_and_resume(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["start", "claude", "--detach"]) == 0
    (sd,) = list_state_dirs()
    capsys.readouterr()
    before = len(docker_state(world)["calls"])
    assert main(["ls", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["backend"], row["status"]) == ("smolmachines", "running")
    ls_calls = docker_state(world)["calls"][before:]
    assert [c[0] for c in ls_calls] == ["ps"]  # one Docker call (the sidecars) and one Machine.list
    assert main(["stop", sd.slug]) == 0
    assert smol_db(world)["machines"] == {}
    assert docker_state(world)["containers"] == [] and docker_state(world)["networks"] == []
    assert sd.read().status == "stopped"
    assert main(["resume", sd.slug, "--detach"]) == 0
    assert list(smol_db(world)["machines"]) == [f"claude-bottle-{sd.slug}"]
    assert sd.read().generation == 2


def test_exec_runs_in_the_machine_and_a_terminal_is_refused_in_one_line(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["start", "claude", "--detach"]) == 0
    (sd,) = list_state_dirs()
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"piped input")))
    assert main(["exec", sd.slug, "--", "cat"]) == 0
    last = [c for c in smol_db(world)["calls"] if c[0] == "exec"][-1]
    assert last[2] == ["cat"] and last[4] == "/workspace" and last[5] == "piped input"
    assert main(["exec", "-t", sd.slug, "--", "bash"]) != 0
    err = capsys.readouterr().err
    assert "no terminal into the microVM" in err and "Traceback" not in err


def test_a_start_that_cannot_boot_fails_in_one_line_and_leaves_nothing(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_SMOL_BOOT_FAIL", "1")
    assert main(["start", "claude", "--detach"]) != 0
    err = capsys.readouterr().err
    assert "did not start" in err and "before the agent was ready" in err and "Traceback" not in err
    assert smol_db(world)["machines"] == {}  # the failed record is deleted too
    st = docker_state(world)
    assert st["containers"] == [] and st["networks"] == []
    assert list_state_dirs() == []


def test_without_the_sdk_start_says_how_to_install_and_the_rest_works(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sdk, "_module", None)
    monkeypatch.setitem(sys.modules, "smol", None)  # import smol fails
    assert main(["start", "claude", "--detach"]) != 0
    err = capsys.readouterr().err
    assert "pip install 'claude-bottle[smolmachines]'" in err
    assert docker_state(world)["calls"] == [] and list_state_dirs() == []  # before any build
    assert main(["ls"]) == 0
    assert main(["cleanup", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "smolmachines SDK is not installed" in out
    assert main(["doctor"]) in (0, 3)
    assert "smolmachines SDK: not installed" in capsys.readouterr().out


def hand_made(
    world: dict[str, Any], slug: str, *, machine: str | None, guard: str | None, ns: str = "claude-bottle"
) -> None:
    """A bottle's objects as a crash or a live run leaves them."""
    labels = {"claude-bottle.namespace": ns, "claude-bottle.slug": slug, "claude-bottle.backend": "smolmachines"}
    st = docker_state(world)
    st.setdefault("networks", [])
    lb = ",".join(f"{k}={v}" for k, v in labels.items())
    if guard:
        st["containers"].append(
            {
                "ID": f"c-{slug}",
                "Names": f"{ns}-sidecars-{slug}",
                "State": guard,
                "Labels": lb + ",claude-bottle.role=sidecars",
            }
        )
    st["networks"].append({"ID": f"n-{slug}", "Name": f"{ns}-bundle-{slug}", "Labels": lb})
    world["docker"].write_text(json.dumps(st))
    if machine:
        db = smol_db(world)
        db.setdefault("replies", {})
        db["machines"][f"{ns}-{slug}"] = {"state": machine, "labels": labels, "config": {}}
        world["smol"].parent.mkdir(parents=True, exist_ok=True)
        world["smol"].write_text(json.dumps(db))


def test_cleanup_keeps_a_live_vm_bottle_and_reaps_a_crashed_one(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    hand_made(world, "live-aaaaa", machine="running", guard="running")
    hand_made(world, "dead-bbbbb", machine="stopped", guard="exited")
    hand_made(world, "lost-ccccc", machine=None, guard="running")  # a sidecar whose machine is gone
    hand_made(world, "other-ddddd", machine="stopped", guard="exited", ns="someone-else")
    for slug in ("live-aaaaa", "dead-bbbbb"):
        sd = StateDir(slug)
        sd.create()
        sd.write(
            sd.read().__class__(slug=slug, agent="claude", bottle="default", backend="smolmachines", status="running")
        )
    assert main(["cleanup", "--yes"]) == 0
    out = capsys.readouterr().out
    # The Docker backend's stray buckets claim none of it (same name prefix, another backend's label).
    docker_part = out.split("--- smolmachines backend ---")[0]
    assert "sidecars" not in docker_part and "bundle" not in docker_part
    assert "kept live bottle: live-aaaaa" in out
    names = {c["Names"] for c in docker_state(world)["containers"]}
    assert names == {"claude-bottle-sidecars-live-aaaaa", "someone-else-sidecars-other-ddddd"}
    nets = {n["Name"] for n in docker_state(world)["networks"]}
    assert nets == {"claude-bottle-bundle-live-aaaaa", "someone-else-bundle-other-ddddd"}
    assert set(smol_db(world)["machines"]) == {"claude-bottle-live-aaaaa", "someone-else-other-ddddd"}
    assert StateDir("dead-bbbbb").read().status == "stopped"  # its machine is gone now
    assert StateDir("live-aaaaa").exists()  # a live bottle's state is never an orphan


def test_ls_shows_both_backends(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    hand_made(world, "vm-aaaaa", machine="running", guard="exited")
    sd = StateDir("vm-aaaaa")
    sd.create()
    sd.write(
        sd.read().__class__(slug="vm-aaaaa", agent="claude", bottle="default", backend="smolmachines", status="running")
    )
    capsys.readouterr()
    assert main(["ls", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "running (guard exited)"


# -- doctor ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "ok"), [(0o666, True), (0o660, False), (0o600, False)])
def test_kvm_must_be_open_to_the_vmms_uid(tmp_path: Path, mode: int, ok: bool) -> None:
    dev = tmp_path / "kvm"
    dev.touch()
    dev.chmod(mode)
    check = doctor.kvm_check(dev)
    assert check.ok is ok
    if not ok:
        assert "chmod 0666 /dev/kvm" in check.fix and "2000000" in check.detail
    assert not doctor.kvm_check(tmp_path / "absent").ok


def test_nested_pvm_is_named_as_the_reason(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    modules = tmp_path / "modules"
    (modules / "kvm_pvm").mkdir(parents=True)
    cpuinfo.write_text("flags\t\t: fpu vme sse4_2 cx16\n")
    check = doctor.host_virtualisation(cpuinfo, modules)
    assert not check.ok and "nested PVM" in check.detail and "cannot run the guest kernel" in check.detail
    cpuinfo.write_text("flags\t\t: fpu vmx sse4_2\n")
    assert doctor.host_virtualisation(cpuinfo, modules).ok


def test_doctor_lists_the_backend_with_its_checks(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    main(["doctor"])
    out = capsys.readouterr().out
    assert "smolmachines backend:" in out and "smolmachines SDK: 1.32.2-fake" in out and "/dev/kvm" in out
    assert "Traceback" not in out


def test_the_agent_env_points_at_the_guards_address() -> None:
    from claude_bottle.guard_inputs.inputs import GuardInputs

    g = GuardInputs(
        "guard",
        3128,
        Path("/g"),
        Path("/a"),
        agent_env={"ANTHROPIC_BASE_URL": "http://egress:3128/anthropic", "X": "y"},
    )
    assert g.agent_env_for("http://127.77.1.2:3128") == {
        "ANTHROPIC_BASE_URL": "http://127.77.1.2:3128/anthropic",
        "X": "y",
    }


def test_a_capability_block_is_granted_rebuilt_and_resumed_through_the_vm_backend(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["start", "claude", "--detach", "--prompt", "work"]) == 0
    (sd,) = list_state_dirs()
    first_image = next(iter(smol_db(world)["machines"].values()))["config"]["image"]
    # The guard recorded the agent's package request; the detached run ended when it stopped itself.
    (sd.path / "requests.jsonl").write_text(
        json.dumps({"time": "2026-11-28T10:00:00+00:00", "id": "r-0001", "kind": "apt", "name": "jq", "reason": "x"})
        + "\n"
    )
    (sd.claude_home / "bottle-run.exit").write_text("143\n")
    transcript = sd.claude_home / "projects" / "-workspace" / f"{sd.read().session_id}.jsonl"
    transcript.parent.mkdir(parents=True)
    transcript.write_text("{}\n")  # what claude wrote before it stopped
    capsys.readouterr()
    assert main(["ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "blocked (wants apt:jq)"
    assert sd.preserved() == "capability-block"
    assert main(["grant", sd.slug, "--request", "r-0001"]) == 0
    record = sd.read()
    assert (record.granted_packages, record.rebuilt, record.generation) == ({"apt": ["jq"]}, True, 2)
    (machine,) = smol_db(world)["machines"].values()
    assert machine["config"]["image"] != first_image  # the rebuilt image, handed over as its own archive
    (tmux,) = [c[2] for c in smol_db(world)["calls"][-3:] if c[0] == "exec" and c[2][:1] == ["tmux"]]
    assert "--resume" in tmux and "granted apt:jq" in tmux[-1]  # detached as it was run, same session


def test_only_directories_count_as_protected_on_a_vm(tmp_path: Path) -> None:
    """A file cannot be a VM mount: `.git/config` stays writable in the VM, so gitguard must judge it when
    the run ends, not trust it unchanged (the Docker backend mounts it read-only, and says so)."""
    from types import SimpleNamespace

    from claude_bottle.backend import BottleBackend
    from claude_bottle.backend.smolmachines.backend import SmolmachinesBottleBackend

    (tmp_path / ".git" / "hooks").mkdir(parents=True)
    (tmp_path / ".git" / "config").write_text("[core]\n")
    bottle = SimpleNamespace(agent_workspace=tmp_path, protected=(".git/config", ".git/hooks"))
    assert SmolmachinesBottleBackend().read_only_paths(bottle) == [".git/hooks"]  # type: ignore[arg-type]
    assert BottleBackend.read_only_paths(SmolmachinesBottleBackend(), bottle) == [".git/config", ".git/hooks"]  # type: ignore[arg-type]
