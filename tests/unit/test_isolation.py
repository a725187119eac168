"""isolation = "gvisor" (issue 23) without an engine: the runtime judged as `docker info` reports it, the
agent alone rendered under it, the Kubernetes Pod naming its RuntimeClass (validated offline), and each
bad request one line before any work."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest

from claude_bottle.backend.docker import backend as docker_backend
from claude_bottle.backend.docker.compose import NetPlan, render_compose
from claude_bottle.engine import runtimes
from claude_bottle.errors import BottleError, ManifestError
from claude_bottle.hostfs.paths import Roots
from claude_bottle.identity import Identity, RuntimeIds
from claude_bottle.manifest import parse_manifest

from .test_compose import checked, guard_inputs, workspace
from .test_kubernetes_render import VERSIONS
from .test_kubernetes_render import objects as k8s_objects

RUNSC = {"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", "--network=host"]}
NAME = "claude-bottle-gvisor"


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        ({NAME: RUNSC}, None),
        ({NAME: {"path": "/usr/local/bin/runsc", "runtimeArgs": ["--network", "host"]}}, None),
        ({"runc": {"path": "runc"}}, "has no runtime 'claude-bottle-gvisor' (it has: runc)"),
        ({}, "has no runtime 'claude-bottle-gvisor' (it has: none)"),
        ({NAME: {"path": "/usr/bin/crun"}}, "runs '/usr/bin/crun', not runsc"),
        ({NAME: {"path": "/usr/bin/runsc"}}, "without --network=host"),  # runsc's default: its own netstack
        ({NAME: {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host", "--network=sandbox"]}}, "without"),
        ({NAME: {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}, "without --network=host"),
        ({NAME: {"path": "/usr/bin/runsc", "runtimeArgs": ["network=host"]}}, "without --network=host"),
        ({NAME: "not a table"}, "has no runtime"),
    ],
)
def test_the_runtime_is_judged_as_the_engine_reports_it(found: dict[str, Any], expected: str | None) -> None:
    why = runtimes.judge_gvisor(runtimes.Runtime.parse(json.dumps(found)), NAME, where=" on the remote engine r")
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why and why.startswith('isolation = "gvisor": the engine on the remote')
        assert "\n" not in why and "./scripts/setup" in why


def test_require_gvisor_reads_docker_info_and_honours_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, ...]] = []

    def fake(*args: str, **_kw: Any) -> Any:
        seen.append(args)
        return SimpleNamespace(ok=True, stdout=json.dumps({"other-gvisor": RUNSC}))

    monkeypatch.setattr(runtimes, "docker", fake)
    with pytest.raises(BottleError, match="no runtime 'claude-bottle-gvisor'"):
        runtimes.require_gvisor()
    assert seen[0] == ("info", "--format", "{{json .Runtimes}}")
    monkeypatch.setenv("CLAUDE_BOTTLE_GVISOR_RUNTIME", "other-gvisor")
    runtimes.require_gvisor()  # registered under the name the operator chose
    monkeypatch.setattr(runtimes, "docker", lambda *_a, **_k: SimpleNamespace(ok=False, stdout=""))
    with pytest.raises(BottleError, match="it has: none"):
        runtimes.require_gvisor()


def render(tmp_path: Path, runtime: str | None) -> dict[str, Any]:
    text = '[bottles.default]\nisolation = "gvisor"\n[agents.claude]\n'
    b, paths = checked(tmp_path, text, workspace(tmp_path))
    assert b.isolation == "gvisor"
    return render_compose(
        identity=Identity("claude-abcde", "docker", 4242, 12.5, "2026-01-01T00:00:00+00:00"),
        bottle=b,
        workspace=paths.workspace,
        state_path=tmp_path / "s",
        agent_image="agent:x",
        guard_image="guard:y",
        ids=RuntimeIds(1000, 1000, 10001, 10001),
        net=NetPlan("10.213.7.16/28"),
        guard=guard_inputs(tmp_path),
        runtime=runtime,
    )


def test_the_agent_alone_runs_under_gvisor(tmp_path: Path) -> None:
    doc = render(tmp_path, NAME)
    services = doc["services"]
    assert services["agent"]["runtime"] == NAME
    assert "runtime" not in services["egress"] and "runtime" not in services["net"]  # ours, on runc
    # gVisor numbers its own devices and inodes: the agent reports nothing for the CLI to compare.
    assert services["agent"]["environment"]["BOTTLE_VERIFY"] == ""
    # Everything else that seals the agent is as under runc.
    runc = render(tmp_path, None)["services"]["agent"]
    assert "runtime" not in runc and runc["environment"]["BOTTLE_VERIFY"] != ""
    for key in ("network_mode", "user", "cap_drop", "security_opt", "volumes", "pids_limit", "mem_limit"):
        assert services["agent"][key] == runc[key], key


def test_an_unknown_isolation_lists_the_valid_ones() -> None:
    with pytest.raises(ManifestError, match=r"bottles.default.isolation: Input should be 'container' or 'gvisor'"):
        parse_manifest('[bottles.default]\nisolation = "vm"\n[agents.c]\n')
    with pytest.raises(ManifestError, match="runtime_class"):
        parse_manifest('[bottles.default]\nruntime_class = "Not A Name"\n[agents.c]\n')


def test_a_backend_without_gvisor_refuses_it_in_one_line(tmp_path: Path) -> None:
    from claude_bottle.bottle import Bottle

    ws = workspace(tmp_path)
    m = parse_manifest(f'[bottles.default]\n[agents.claude]\nworkspace = "{ws}"\n', path=tmp_path / "m.toml")
    with pytest.raises(BottleError) as exc:
        Bottle.new(
            m, "claude", backend="smolmachines", root=tmp_path / "st", isolation="gvisor", isolations=("container",)
        )
    assert str(exc.value) == (
        "the smolmachines backend has no gvisor isolation: use one of container "
        "(bottles.default.isolation, or start --isolation)"
    )
    b = Bottle.new(m, "claude", backend="docker", root=tmp_path / "st", isolation="gvisor", workspace_mode="copy")
    assert b.spec.isolation == "gvisor"
    assert b.record(owner_pid=1, owner_started=1.0, session_id="s").manifest["bottle"]["isolation"] == "gvisor"


def fake_bottle(tmp_path: Path, roots: Roots, mounts: tuple[tuple[Path, str, bool], ...] = ()) -> Any:
    ws = tmp_path / "w" / "inner"
    return SimpleNamespace(slug="inner-abcde", agent_workspace=ws, mounts=mounts, paths=SimpleNamespace(roots=roots))


def test_a_bind_in_another_bottles_files_is_refused_under_gvisor(tmp_path: Path) -> None:
    """The race the mount check catches under runc (another agent swaps a link in while this bottle starts)
    cannot be caught under gVisor, so it cannot be allowed to arise: no bind in another bottle's files."""
    other = Roots(((tmp_path / "w", "bottle outer-xyzab"),))
    with pytest.raises(BottleError) as exc:
        docker_backend._refuse_swappable_binds(fake_bottle(tmp_path, other))
    assert "the workspace" in str(exc.value) and "bottle outer-xyzab" in str(exc.value)
    assert 'use isolation = "container"' in str(exc.value)
    mount = ((tmp_path / "w" / "data", "/data", True),)
    elsewhere = Roots(((tmp_path / "w" / "data", "bottle outer-xyzab"),))
    with pytest.raises(BottleError, match="mount /data"):
        docker_backend._refuse_swappable_binds(fake_bottle(tmp_path, elsewhere, mount))
    # Its own files (and its own record's, on resume) are not another agent's.
    own = Roots(((tmp_path / "w" / "inner", "this bottle"), (tmp_path / "w" / "inner", "bottle inner-abcde")))
    docker_backend._refuse_swappable_binds(fake_bottle(tmp_path, own))
    docker_backend._refuse_swappable_binds(fake_bottle(tmp_path, Roots()))


@pytest.mark.parametrize("version", VERSIONS)
def test_the_pod_names_its_runtime_class_and_validates(version: str) -> None:
    pod = next(o for o in k8s_objects(isolation="gvisor", runtime_class="gvisor-ptrace") if o["kind"] == "Pod")
    assert pod["spec"]["runtimeClassName"] == "gvisor-ptrace"
    kubernetes_validate.validate(pod, version, strict=True)
    plain = next(o for o in k8s_objects() if o["kind"] == "Pod")
    assert "runtimeClassName" not in plain["spec"]
    bad = json.loads(json.dumps(pod))
    bad["spec"]["runtimeClassName"] = 7  # the control: the schema would see a wrong runtimeClassName
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)
