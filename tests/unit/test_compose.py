"""The rendered Compose project carries the sealing and hardening the spec promises."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.backend.docker.compose import NetPlan, render_compose
from claude_bottle.errors import BottleError
from claude_bottle.guard_inputs.inputs import GuardInputs
from claude_bottle.hostfs.paths import check_bottle_paths
from claude_bottle.identity import Identity, RuntimeIds
from claude_bottle.manifest import parse_manifest

MANIFEST = """
[bottles.default]
env = { FOO = "bar" }
[bottles.default.resources]
cpus = 1.5
memory = "2g"
pids = 300
[bottles.default.egress]
allow = ["api.example.com"]
[agents.claude]
"""


def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    return ws


def checked(tmp_path: Path, text: str, ws: Path, base: Path | None = None) -> tuple[Any, Any]:
    """The bottle spec and its paths, checked as `start` checks them (paths.check_bottle_paths)."""
    base = base or tmp_path
    m = parse_manifest(text, path=base / "claude-bottle.toml")
    b = m.bottles["default"]
    home = tmp_path / "bottle-home"
    return b, check_bottle_paths(b, ws, base, state_roots=[home / "state"], state_home=home, home=tmp_path / "h")


def guard_inputs(tmp_path: Path, engine: str = "guard") -> GuardInputs:
    """What prepare_guard hands a backend (as it would for this bottle), without writing anything."""
    s = tmp_path / "s"
    return GuardInputs(
        engine=engine,
        port=8888 if engine == "pipelock" else 3128,
        dir=s / "guard",
        audit=s / "egress.jsonl",
        agent_env={"ANTHROPIC_BASE_URL": "http://egress:3128/anthropic"} if engine == "guard" else {},
        honey={".npmrc": s / "honey" / ".npmrc"} if engine == "guard" else {},
    )


def render(
    tmp_path: Path, text: str = MANIFEST, ids: RuntimeIds | None = None, *, remote: bool = False
) -> dict[str, Any]:
    """The project for MANIFEST's bottle; `remote`: for an engine that does not see this machine's files
    (which reads the honeytokens' content: they are written first)."""
    b, paths = checked(tmp_path, text, workspace(tmp_path))
    guard = guard_inputs(tmp_path, b.egress.engine)
    if remote:
        for src in guard.honey.values():
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_text("//registry.npmjs.org/:_authToken=npm_honey\n")
    return render_compose(
        identity=Identity("claude-abcde", "docker", 4242, 12.5, "2026-01-01T00:00:00+00:00"),
        bottle=b,
        workspace=paths.workspace,
        mounts=paths.mounts,
        state_path=tmp_path / "s",
        agent_image="agent:x",
        guard_image="guard:y",
        ids=ids or RuntimeIds(1000, 1000, 10001, 10001),
        net=NetPlan("10.213.7.16/28"),
        guard=guard,
        remote=remote,
    )


def test_agent_is_only_on_the_internal_network(tmp_path: Path) -> None:
    doc = render(tmp_path)
    assert doc["name"] == "claude-bottle-claude-abcde"
    # The agent joins the namespace of the `net` container, which is on the internal network only.
    assert doc["services"]["agent"]["network_mode"] == "service:net"
    assert "networks" not in doc["services"]["agent"]
    assert doc["services"]["net"]["networks"] == {"internal": {}}
    nets = doc["networks"]
    assert nets["internal"] == {
        "name": "claude-bottle-claude-abcde-internal",
        "internal": True,
        "labels": doc["services"]["agent"]["labels"],
        "ipam": {"config": [{"subnet": "10.213.7.16/28"}]},
    }
    assert not nets["outbound"].get("internal")
    assert set(doc["services"]["egress"]["networks"]) == {"internal", "outbound"}
    assert doc["services"]["egress"]["networks"]["internal"] == {"aliases": ["egress"], "ipv4_address": "10.213.7.30"}


def test_the_guard_is_the_agents_dns(tmp_path: Path) -> None:
    doc = render(tmp_path)
    agent, guard = doc["services"]["agent"], doc["services"]["egress"]
    assert doc["services"]["net"]["dns"] == ["10.213.7.30"]
    assert "dns" not in agent
    # Served on the bottle's internal address only, to the bottle's own network only.
    assert guard["command"][guard["command"].index("--dns") + 1] == "10.213.7.30:53"
    assert guard["command"][guard["command"].index("--listen") + 1] == "10.213.7.30:3128"
    # .16 network, .17 the host's side of the bridge, .29 the inbound relay's, .31 broadcast: .18-.28 and the
    # guard itself (.30, for its own healthcheck) are clients.
    assert guard["command"][guard["command"].index("--clients") + 1] == (
        "10.213.7.18/31,10.213.7.20/30,10.213.7.24/30,10.213.7.28/32,10.213.7.30/32"
    )
    assert doc["services"]["net"]["environment"] == {"BOTTLE_INBOUND": "10.213.7.29"}
    assert guard["sysctls"] == {"net.ipv4.ip_unprivileged_port_start": 0}
    assert "cap_add" not in guard


def test_credentials_are_placeholders_and_honeytokens_read_only(tmp_path: Path) -> None:
    agent = render(tmp_path)["services"]["agent"]
    assert agent["environment"]["ANTHROPIC_BASE_URL"] == "http://egress:3128/anthropic"
    honey = [v for v in agent["volumes"] if v["target"] == "/home/claude/.npmrc"]
    assert honey and honey[0]["read_only"] is True


def test_pipelock_engine(tmp_path: Path) -> None:
    doc = render(
        tmp_path, MANIFEST.replace('allow = ["api.example.com"]', 'allow = ["api.example.com"]\nengine = "pipelock"')
    )
    guard, agent = doc["services"]["egress"], doc["services"]["agent"]
    assert guard["image"] == "ghcr.io/luckypipewrench/pipelock"
    assert guard["command"] == ["run", "--listen", "10.213.7.30:8888", "--config", "/etc/pipelock/pipelock.yaml"]
    assert agent["environment"]["HTTPS_PROXY"] == "http://egress:8888"
    assert agent["environment"]["BOTTLE_GUARD_HEALTH"] == "http://egress:8888/health"
    assert "dns" not in agent and "dns" not in doc["services"]["net"]
    assert doc["services"]["net"]["command"] == ["10.213.7.30", "8888"]


def test_agent_env_points_at_the_guard_and_keeps_manifest_env(tmp_path: Path) -> None:
    env = render(tmp_path)["services"]["agent"]["environment"]
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert env[key] == "http://egress:3128"
    assert "egress" in env["NO_PROXY"]
    assert env["FOO"] == "bar"


@pytest.mark.parametrize("service", ["agent", "egress"])
def test_hardening(tmp_path: Path, service: str) -> None:
    svc = render(tmp_path)["services"][service]
    assert svc["cap_drop"] == ["ALL"]
    assert svc["security_opt"] == ["no-new-privileges:true"]
    assert svc["init"] is True
    assert svc["stop_grace_period"] == "1s"
    assert not svc["user"].startswith("0:")
    assert "privileged" not in svc
    assert svc["labels"]["claude-bottle.owner-pid"] == "4242"
    for vol in svc["volumes"]:
        assert "docker.sock" not in vol["source"]


def test_limits_and_guard_read_only(tmp_path: Path) -> None:
    doc = render(tmp_path)
    agent, guard = doc["services"]["agent"], doc["services"]["egress"]
    assert (agent["cpus"], agent["mem_limit"], agent["pids_limit"]) == (1.5, "2g", 300)
    assert guard["read_only"] is True
    assert guard["healthcheck"]["test"][0] == "CMD"
    assert agent["depends_on"] == {"egress": {"condition": "service_started"}, "net": {"condition": "service_started"}}


def test_net_container_firewalls_then_drops_everything(tmp_path: Path) -> None:
    net = render(tmp_path)["services"]["net"]
    assert net["entrypoint"] == ["/usr/local/sbin/bottle-firewall"]
    assert net["command"] == ["10.213.7.30", "3128", "53"]
    assert net["cap_drop"] == ["ALL"] and set(net["cap_add"]) == {"NET_ADMIN", "SETUID", "SETGID", "SETPCAP"}
    assert net["init"] is False
    script = (Path(__file__).parents[2] / "claude_bottle" / "images" / "bottle-firewall").read_text()
    assert "--bounding-set=-all" in script and "--reuid=65534" in script


def test_external_networks_replace_the_outbound_one(tmp_path: Path) -> None:
    text = MANIFEST.replace('allow = ["api.example.com"]', 'allow = ["api.example.com"]\nnetworks = ["lan"]')
    doc = render(tmp_path, text)
    assert doc["networks"]["lan"] == {"name": "lan", "external": True}
    assert "outbound" not in doc["networks"]
    assert set(doc["services"]["egress"]["networks"]) == {"internal", "lan"}


def test_mounts_default_read_only_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    text = (
        MANIFEST + ""
        if False
        else MANIFEST.replace(
            "[bottles.default.resources]",
            'mounts = [{ host = "data", guest = "/data" }, { host = "data", guest = "/rw", mode = "rw" }]\n'
            "[bottles.default.resources]",
        )
    )
    vols = render(tmp_path, text)["services"]["agent"]["volumes"]
    extra = {v["target"]: v["read_only"] for v in vols if v["target"] in ("/data", "/rw")}
    assert extra == {"/data": True, "/rw": False}
    with pytest.raises(BottleError, match="does not exist"):
        render(tmp_path, text.replace('host = "data", guest = "/data"', 'host = "nope", guest = "/data"'))
    # Every bind whose source is outside the state dir is verified at start: the agent reports each.
    doc = render(tmp_path, text)
    verify = doc["services"]["agent"]["environment"]["BOTTLE_VERIFY"].split("\n")
    assert verify == ["/workspace", "/data", "/rw"]


def test_who_the_agent_and_guard_run_as(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("os.getuid", lambda: 0)
    monkeypatch.setattr("os.getgid", lambda: 0)
    monkeypatch.delenv("SUDO_UID", raising=False)
    users = tmp_path / "users-project"
    users.mkdir()
    os.chown(users, 1000, 1001)
    # Root on someone's project: the agent is its owner; root's own project: uid 0 (no capabilities).
    assert RuntimeIds.for_host(users) == RuntimeIds(1000, 1001, 10001, 10001)
    roots = tmp_path / "roots-project"
    roots.mkdir()
    assert RuntimeIds.for_host(roots) == RuntimeIds(0, 0, 10001, 10001)
    monkeypatch.setenv("SUDO_UID", "1234")
    monkeypatch.setenv("SUDO_GID", "99")
    assert RuntimeIds.for_host(roots) == RuntimeIds(1234, 99, 10001, 10001)  # sudo: the user who asked
    monkeypatch.delenv("SUDO_UID")
    monkeypatch.delenv("SUDO_GID")
    monkeypatch.setattr("os.getuid", lambda: 1234)
    monkeypatch.setattr("os.getgid", lambda: 99)
    assert RuntimeIds.for_host() == RuntimeIds(1234, 99, 1234, 99)


def test_workspace_guards_manifest_git_and_mount_sources(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    (ws / ".git" / "hooks").mkdir(parents=True)
    (ws / ".git" / "config").write_text("[core]\n")
    (ws / "claude-bottle.toml").write_text(MANIFEST)
    m = parse_manifest(MANIFEST, path=ws / "claude-bottle.toml")
    _, paths = checked(tmp_path, MANIFEST, ws, base=ws)
    assert paths.protected == (".git/config", ".git/hooks")
    doc = render_compose(
        identity=Identity("claude-abcde", "docker", 1, 1.0, "t"),
        bottle=m.bottles["default"],
        workspace=ws,
        state_path=tmp_path / "s",
        agent_image="a",
        guard_image="g",
        ids=RuntimeIds(1000, 1000, 10001, 10001),
        net=NetPlan("10.213.7.16/28"),
        guard=guard_inputs(tmp_path),
        manifest_file=ws / "claude-bottle.toml",
        protected=paths.protected,
    )
    vols = {v["target"]: v.get("read_only", False) for v in doc["services"]["agent"]["volumes"]}
    assert vols["/workspace/.git"] is False  # a mount point: it cannot be renamed away
    assert vols["/workspace/.git/hooks"] is True and vols["/workspace/.git/config"] is True
    assert vols["/workspace/claude-bottle.toml"] is True
    inside = MANIFEST.replace(
        "[bottles.default.resources]", 'mounts = [{ host = "data", guest = "/data" }]\n[bottles.default.resources]'
    )
    (ws / "data").mkdir()
    with pytest.raises(BottleError, match="inside the workspace"):
        checked(tmp_path, inside, ws, base=ws)


def test_the_guard_restarts_has_its_own_cpu_and_every_log_is_bounded(tmp_path: Path) -> None:
    doc = render(tmp_path)
    guard = doc["services"]["egress"]
    assert guard["restart"] == "on-failure" and guard["cpus"] == 1.0 and guard["mem_limit"] == "512m"
    for name, svc in doc["services"].items():
        assert svc["logging"] == {"driver": "json-file", "options": {"max-size": "10m", "max-file": "2"}}, name
    assert "restart" not in doc["services"]["agent"]
