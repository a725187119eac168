"""The Kubernetes backend's verbs against a fake `kubectl` (no cluster runs here): what it applies is
the rendered List (validated against the API schema), the workspace travels in as a tar before the Pod
is released, the engine is asked for readiness, exec/logs go to the agent container, a stop brings the
audit log home and removes what it made (the claim stays), and a machine without kubectl or any such
bottle asks no cluster at all."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import kubernetes_validate
import pytest

from claude_bottle.backend import _BACKENDS
from claude_bottle.backend.docker.backend import DockerBottleBackend
from claude_bottle.cli import main
from claude_bottle.state import bottle_home, list_state_dirs
from claude_bottle.trust import trust_file

KUBECTL = r"""
import io, tarfile
log = os.environ["FAKE_KUBECTL_LOG"]
a = sys.argv[1:]
if a[:2] == ["--context", a[1] if len(a) > 1 else ""]:
    a = a[2:]
reads = a[:1] == ["apply"] or (a[:1] == ["exec"] and "-i" in a)
data = sys.stdin.buffer.read() if reads else b""
calls = json.load(open(log)) if os.path.exists(log) else []
calls.append({"argv": a, "stdin": len(data)})
json.dump(calls, open(log, "w"))
state = log + ".state.json"
st = json.load(open(state)) if os.path.exists(state) else {"pods": {}, "tars": []}
out = b""
if a[:1] == ["apply"]:
    for item in json.loads(data)["items"]:
        if item["kind"] == "Pod":
            st["pods"][item["metadata"]["name"]] = item["metadata"]["labels"]
    open(log + ".apply.json", "wb").write(data)
elif a[:1] == ["exec"] and "-xf" in a:
    st["tars"].append(data.hex())
elif a[:1] == ["exec"] and "-cf" in a:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        body = b'{"kind":"from-the-cluster"}\n'
        info = tarfile.TarInfo("./egress.jsonl"); info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    out = buf.getvalue()
elif a[:2] == ["get", "pods"]:
    items = [{"metadata": {"name": n, "labels": lb, "annotations": {"claude-bottle.owner-pid": "1"}},
              "status": {"phase": "Running"}} for n, lb in st["pods"].items()]
    out = json.dumps({"items": items}).encode()
elif a[:1] == ["get"] and a[1].startswith("pod/"):
    out = json.dumps({"status": {"initContainerStatuses": [{"name": "seed", "state": {"running": {}}}]}}).encode()
elif a[:1] == ["get"]:
    out = json.dumps({"items": []}).encode()
elif a[:1] == ["delete"]:
    st["pods"] = {}
elif a[:2] == ["config", "current-context"]:
    out = b"test-cluster\n"
elif a[:1] == ["version"]:
    sys.stderr.write("Unable to connect to the server\n"); sys.exit(1)
json.dump(st, open(state, "w"))
sys.stdout.buffer.write(out)
"""

MANIFEST = """
[bottles.default]
backend = "kubernetes"
[bottles.default.egress]
allow = ["api.anthropic.com"]
[agents.claude]
bottle = "default"
"""


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_exe: Callable[[str, str], Path]) -> Path:
    log = tmp_path / "kubectl.json"
    monkeypatch.setenv("FAKE_KUBECTL_LOG", str(log))
    monkeypatch.setenv("CLAUDE_BOTTLE_REGISTRY", "registry.test:5000/team")
    fake_exe("kubectl", KUBECTL)
    fake_exe("docker", "open(os.environ['FAKE_KUBECTL_LOG'] + '.docker', 'a').write(' '.join(sys.argv[1:]) + '\\n')")
    monkeypatch.setattr(
        DockerBottleBackend, "prepare_images",
        lambda self, *, plan, progress: {"agent": "claude-bottle-agent:aaa", "guard": "claude-bottle-guard:bbb"},
    )  # fmt: skip
    monkeypatch.setitem(_BACKENDS, "kubernetes", "claude_bottle.backend.kubernetes.backend:KubernetesBottleBackend")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "claude-bottle.toml").write_text(MANIFEST)
    (project / "hello.txt").write_text("from the laptop\n")
    trust_file(project / "claude-bottle.toml", home=bottle_home())
    monkeypatch.chdir(project)
    return log


def calls(log: Path) -> list[list[str]]:
    return [c["argv"] for c in json.loads(log.read_text())]


def test_a_bottle_on_a_cluster_from_start_to_stop(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["start", "claude", "--detach"]) == 0
    (state,) = list_state_dirs()
    pod = f"{os.environ.get('CLAUDE_BOTTLE_NAMESPACE', 'claude-bottle')}-{state.slug}"
    # The images: built here, pushed to the registry the cluster pulls from, and those are what it runs.
    pushed = (cluster.parent / "kubectl.json.docker").read_text().splitlines()
    assert "push -q registry.test:5000/team/claude-bottle-agent:aaa" in pushed
    applied = json.loads((cluster.parent / "kubectl.json.apply.json").read_text())
    for item in applied["items"]:
        kubernetes_validate.validate(item, kubernetes_validate.latest_version(), strict=True)
    pod_obj = next(i for i in applied["items"] if i["kind"] == "Pod")
    assert {c["image"] for c in pod_obj["spec"]["containers"]} == {
        "registry.test:5000/team/claude-bottle-agent:aaa", "registry.test:5000/team/claude-bottle-guard:bbb",
    }  # fmt: skip
    secret = next(i for i in applied["items"] if i["kind"] == "Secret")
    assert "secrets.json" in secret["stringData"]
    # The workspace went in, then the Pod was released; readiness came from the engine.
    argvs = calls(cluster)
    seeded = [i for i, a in enumerate(argvs) if a[:1] == ["exec"] and "/state/.seeded" in a]
    tars = [i for i, a in enumerate(argvs) if a[:1] == ["exec"] and "-xf" in a]
    waits = [i for i, a in enumerate(argvs) if a[:1] == ["wait"]]
    assert tars and seeded and waits and max(tars) < seeded[0] < waits[0]
    st = json.loads((cluster.parent / "kubectl.json.state.json").read_text())
    with tarfile.open(fileobj=io.BytesIO(bytes.fromhex(st["tars"][0]))) as tar:
        assert tar.extractfile("workspace/hello.txt").read() == b"from the laptop\n"  # type: ignore[union-attr]
    assert ["wait", "--for=condition=Ready", f"pod/{pod}"] == argvs[waits[0]][:3]
    # ls asks the cluster; exec goes to the agent container.
    capsys.readouterr()
    assert main(["ls", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows if r["slug"] == state.slug] == ["running"]
    assert main(["exec", state.slug, "--", "echo", "hi"]) == 0
    exec_argv = calls(cluster)[-1]
    assert exec_argv[:2] == ["exec", "-i"] and exec_argv[-5:] == [pod, "-c", "agent", "--", "echo", "hi"][-5:]
    # A live grant reaches the guard: the policy ConfigMap is patched with the rewritten policy.
    assert main(["grant", state.slug, "--egress", "pypi.org"]) == 0
    patch = calls(cluster)[-1]
    assert patch[:3] == ["patch", "configmap", f"{pod}-policy"]
    assert "pypi.org" in json.loads(json.loads(patch[-1])["data"]["policy.json"])["allow"][-1]["host"]
    # stop: the audit log comes home, the objects go (the claim, holding the bottle's files, stays).
    assert main(["stop", state.slug]) == 0
    assert (state.path / "egress.jsonl").read_text().endswith('{"kind":"from-the-cluster"}\n')
    delete = next(a for a in calls(cluster) if a[:1] == ["delete"])
    assert delete[1] == "pod,networkpolicy,secret,configmap" and f"claude-bottle.slug={state.slug}" in delete[3]


def test_doctor_names_the_context_and_says_it_does_not_answer(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["doctor"])
    text = capsys.readouterr().out
    assert "test-cluster" in text and "does not answer" in text


def test_without_kubectl_or_such_bottles_no_cluster_is_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from claude_bottle.backend.kubernetes.backend import KubernetesBottleBackend

    monkeypatch.setenv("PATH", str(tmp_path))  # no kubectl anywhere
    backend = KubernetesBottleBackend()
    assert backend.statuses() == {}
    assert backend.prepare_cleanup().empty()


def test_a_missing_registry_is_one_line_before_any_work(cluster: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.delenv("CLAUDE_BOTTLE_REGISTRY")
    assert main(["start", "claude", "--detach"]) == 1
    assert "set CLAUDE_BOTTLE_REGISTRY" in capsys.readouterr().err
    assert not cluster.exists() and list_state_dirs() == []
