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
from claude_bottle.bottle.state import StateDir, bottle_home, list_state_dirs
from claude_bottle.cli import main
from claude_bottle.images import builder
from claude_bottle.manifest.trust import trust_file

KUBECTL = r"""
import io, tarfile, time
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


def tar_of(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name); info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


if a[:1] == ["apply"]:
    for item in json.loads(data)["items"]:
        if item["kind"] == "Pod":
            st["pods"][item["metadata"]["name"]] = item["metadata"]["labels"]
    open(log + (".helper.json" if "helper" in data.decode() else ".apply.json"), "wb").write(data)
elif a[:1] == ["exec"] and "-xf" in a:
    st["tars"].append(data.hex())
elif a[:1] == ["exec"] and "tar" in a:
    container = a[a.index("-c") + 1]
    how = os.environ.get("FAKE_KUBECTL_EXEC", "") if container in ("home", "agent") else ""
    if how == "hang":
        time.sleep(3600)
    elif how == "garbage":
        out = os.urandom(64 * 1024)
    elif how == "flood":  # a member claiming a terabyte, its data without end
        info = tarfile.TarInfo("claude-home/big.bin"); info.size = 2**40
        sys.stdout.buffer.write(info.tobuf())
        while True:
            sys.stdout.buffer.write(b"\0" * 65536)
    elif container == "log":
        out = tar_of({"log/egress.jsonl": b'{"kind":"from-the-cluster"}\n', "log/requests.jsonl": b""})
    elif container == "home":
        out = tar_of({"claude-home/projects/p/s.jsonl": b'{"from":"the-claim"}\n'})
    else:
        out = tar_of({"./egress.jsonl": b'{"kind":"from-the-guard"}\n'})
elif a[:2] == ["get", "pods"]:
    items = [{"metadata": {"name": n, "labels": lb, "annotations": {"claude-bottle.owner-pid": "1"}},
              "status": {"phase": "Running"}} for n, lb in st["pods"].items()]
    out = json.dumps({"items": items}).encode()
elif a[:2] == ["get", "runtimeclass"]:
    if a[2] != os.environ.get("FAKE_KUBECTL_RUNTIMECLASS"):
        sys.stderr.write(f'Error from server (NotFound): runtimeclasses.node.k8s.io "{a[2]}" not found\n'); sys.exit(1)
    out = f"runtimeclass.node.k8s.io/{a[2]}\n".encode()
elif a[:1] == ["get"] and a[1].startswith("pod/"):
    running = [{"name": n, "state": {"running": {}}} for n in ("guard", "agent", "log", "home")]
    out = json.dumps({"status": {"initContainerStatuses": [{"name": "seed", "state": {"running": {}}}],
                                 "containerStatuses": running}}).encode()
elif a[:1] == ["get"]:
    out = json.dumps({"items": []}).encode()
elif a[:1] == ["delete"]:
    helpers = "claude-bottle.helper=1" in " ".join(a)
    gone = [n for n, lb in st["pods"].items() if bool(lb.get("claude-bottle.helper")) == helpers]
    st["pods"] = {n: lb for n, lb in st["pods"].items() if n not in gone}
    if "-o" in a:
        out = "".join(f"pod/{n}\n" for n in gone).encode()
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
        builder, "prepare",
        lambda bottle, progress, **_kw: {"agent": "claude-bottle-agent:aaa", "guard": "claude-bottle-guard:bbb"},
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
    # stop: the objects go first (the claim, holding the bottle's files, stays), then the audit log and the
    # transcripts come home from the claim through a helper Pod, which goes too. The operator's own line
    # (the grant, appended here) is kept after the cluster's.
    before = len(calls(cluster))
    assert main(["stop", state.slug]) == 0
    argvs = calls(cluster)[before:]
    assert argvs[0][:2] == ["delete", "pod,networkpolicy,secret,configmap"]
    assert f"claude-bottle.slug={state.slug}" in argvs[0][3]
    log = [json.loads(x) for x in (state.path / "egress.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in log] == ["from-the-cluster", "operator"]
    assert (state.claude_home / "projects" / "p" / "s.jsonl").read_text() == '{"from":"the-claim"}\n'
    assert argvs[-1][:2] == ["delete", "pod,networkpolicy"] and "claude-bottle.helper=1" in argvs[-1][3]
    assert state.preserved() is None and not (state.path / "home-partial").exists()
    helper = json.loads((cluster.parent / "kubectl.json.helper.json").read_text())
    for item in helper["items"]:
        kubernetes_validate.validate(item, kubernetes_validate.latest_version(), strict=True)


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


def _started(cluster: Path) -> StateDir:
    assert main(["start", "claude", "--detach"]) == 0
    (state,) = list_state_dirs()
    return state


def _stopped(cluster: Path, state: StateDir, capsys: pytest.CaptureFixture[str]) -> list[list[str]]:
    """`stop`, which must stop: exit 0, the bottle's objects deleted first and the helper after; what it did."""
    before = len(calls(cluster))
    capsys.readouterr()
    assert main(["stop", state.slug]) == 0
    argvs = calls(cluster)[before:]
    assert argvs[0][:2] == ["delete", "pod,networkpolicy,secret,configmap"]  # the bottle: gone, first
    assert argvs[-1][:2] == ["delete", "pod,networkpolicy"] and "claude-bottle.helper=1" in argvs[-1][3]
    assert not any(a[:1] == ["exec"] and "agent" in a for a in argvs)  # nothing read from the agent's container
    st = json.loads((cluster.parent / "kubectl.json.state.json").read_text())
    assert st["pods"] == {}  # neither the bottle's Pod nor the helper is left
    return argvs


def _one_line_preserved(state: StateDir, capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    why = state.preserved() or ""
    assert "\n" not in why and all(e in why for e in expected), why
    err = capsys.readouterr().err
    assert f"preserved: {why}" in err.splitlines()  # stop says it, in one line
    return why


def test_a_stop_whose_trip_home_hangs_still_stops_and_is_preserved(
    cluster: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The transfer of ~/.claude never ends: the stop still deletes the bottle (first) and the helper (last),
    the log came home before, and the bottle is preserved for `pull` with the reason in one line."""
    from claude_bottle.backend.kubernetes import backend

    state = _started(cluster)
    monkeypatch.setattr(backend, "TRANSFER_TIMEOUT", 1.0)
    monkeypatch.setenv("FAKE_KUBECTL_EXEC", "hang")
    _stopped(cluster, state, capsys)
    _one_line_preserved(state, capsys, "files still on cluster", "did not finish within 1s", f"pull {state.slug}")
    assert '"from-the-cluster"' in (state.path / "egress.jsonl").read_text()
    assert state.read().status == "stopped"  # the stop finished: secrets dropped, the record updated
    # `pull` finishes the job once the cluster answers: the transcripts come, the bottle is let go.
    monkeypatch.delenv("FAKE_KUBECTL_EXEC")
    from claude_bottle.work.upkeep import bring_home

    assert bring_home(state) is None
    assert (state.claude_home / "projects" / "p" / "s.jsonl").is_file() and state.preserved() is None


def test_a_stop_whose_trip_home_is_garbage_still_stops_and_is_preserved(
    cluster: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _started(cluster)
    (state.claude_home / "kept.txt").write_text("the last copy\n")
    monkeypatch.setenv("FAKE_KUBECTL_EXEC", "garbage")
    _stopped(cluster, state, capsys)
    _one_line_preserved(state, capsys, "files still on cluster", "not a whole tar stream")
    assert (state.claude_home / "kept.txt").read_text() == "the last copy\n"  # never replaced by half a trip


def test_a_stop_whose_trip_home_is_over_budget_is_cut_off_and_not_carried_again(
    cluster: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """~/.claude streams without end: the trip stops at its budget and the transfer is cut off (not drained
    to its deadline, which is far off), what came is kept aside, and no later verb carries it again."""
    from claude_bottle.backend import homecoming
    from claude_bottle.backend.kubernetes import backend
    from claude_bottle.hostfs.unpack import Limits

    state = _started(cluster)
    (state.claude_home / "kept.txt").write_text("the last copy\n")
    monkeypatch.setattr(homecoming, "LIMITS", Limits(bytes=1024 * 1024))
    monkeypatch.setattr(backend, "TRANSFER_TIMEOUT", 300.0)
    monkeypatch.setenv("FAKE_KUBECTL_EXEC", "flood")
    _stopped(cluster, state, capsys)
    why = _one_line_preserved(state, capsys, "too much to bring home", "more than 1.0 MiB to carry", "big.bin")
    assert "did not finish" not in why  # cut off at the budget, not at the deadline
    assert (state.claude_home / "kept.txt").read_text() == "the last copy\n"  # not replaced by a part
    assert "# stopped: more than 1.0 MiB" in state.home_skipped.read_text()
    assert '"from-the-cluster"' in (state.path / "egress.jsonl").read_text()  # the log came on its own
    # verify and requests do not carry it again (nor wait on it): they say why, and use what is here.
    before = len(calls(cluster))
    assert main(["verify", state.slug]) == 0
    assert main(["requests", state.slug]) == 0
    assert "too much to bring home" in capsys.readouterr().err
    assert calls(cluster)[before:] == []
    # Nor does it start again from the older copy here (the claim holds newer files) until released.
    assert main(["resume", state.slug, "--detach"]) == 1
    assert f"keep {state.slug} --release" in capsys.readouterr().err
    assert not any(a[:1] == ["apply"] for a in calls(cluster)[before:])


def test_a_gvisor_bottle_names_the_clusters_runtime_class_or_is_refused_first(
    cluster: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """isolation = "gvisor" (issue 23): the Pod names the RuntimeClass; a cluster without it is one line
    before anything is built, pushed or applied."""
    assert main(["start", "claude", "--detach", "--isolation", "gvisor"]) != 0
    err = capsys.readouterr().err
    assert "the cluster has no RuntimeClass 'gvisor'" in err and "runtime_class" in err, err
    assert not (cluster.parent / "kubectl.json.apply.json").exists()
    assert list_state_dirs() == []
    monkeypatch.setenv("FAKE_KUBECTL_RUNTIMECLASS", "gvisor")
    assert main(["start", "claude", "--detach", "--isolation", "gvisor"]) == 0
    applied = json.loads((cluster.parent / "kubectl.json.apply.json").read_text())
    pod = next(i for i in applied["items"] if i["kind"] == "Pod")
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    (state,) = list_state_dirs()
    assert main(["stop", state.slug, "--rm"]) == 0
