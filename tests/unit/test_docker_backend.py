"""The Docker backend's engine-facing parsing, from saved samples and a fake `docker` on PATH."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from claude_bottle.backend import known_backend_names
from claude_bottle.backend.docker.backend import DockerBottleBackend
from claude_bottle.cli import main
from claude_bottle.engine import image_ids
from claude_bottle.errors import BackendError

SAMPLES = Path(__file__).parent / "samples"


def fake_docker_printing(fake_exe: Callable[[str, str], Path], sample: str) -> None:
    fake_exe("docker", f"sys.stdout.write(open({str(SAMPLES / sample)!r}).read())")


def test_statuses_from_a_running_bottle(fake_exe: Callable[[str, str], Path]) -> None:
    fake_docker_printing(fake_exe, "docker-ps-bottle.jsonl")
    (st,) = DockerBottleBackend().statuses().values()
    assert st.slug == "claude-v9ugh" and st.status == "running" and st.owner_pid == 26346


def test_statuses_when_the_agent_exited(fake_exe: Callable[[str, str], Path]) -> None:
    fake_docker_printing(fake_exe, "docker-ps-agent-exited.jsonl")
    (st,) = DockerBottleBackend().statuses().values()
    assert st.status == "exited"


UNREACHABLE = (
    "sys.stderr.write('Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
    "Is the docker daemon running?\\n'); sys.exit(1)"
)


def test_missing_engine_is_one_clear_line(
    fake_exe: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_exe("docker", UNREACHABLE)
    with pytest.raises(BackendError, match=r"Docker engine not reachable at .*: start it"):
        DockerBottleBackend().statuses()
    assert main(["doctor"]) == 3
    out = capsys.readouterr().out
    assert "docker backend:\n" in out and "fail engine: Docker engine not reachable" in out


def test_missing_docker_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendError, match="`docker` not found: install Docker"):
        DockerBottleBackend().statuses()


def test_image_ids_one_call(fake_exe: Callable[[str, str], Path]) -> None:
    fake_exe(
        "docker",
        """
refs = sys.argv[5:]
for r in refs:
    if r.startswith('missing'):
        print(f'Error: No such image: {r}', file=sys.stderr)
    else:
        print('sha256:' + r)
sys.exit(1 if any(r.startswith('missing') for r in refs) else 0)
""",
    )
    assert image_ids(["a:1", "missing:2", "b:3"]) == {"a:1": "sha256:a:1", "b:3": "sha256:b:3"}
    assert image_ids([]) == {}


def test_registry() -> None:
    assert "docker" in known_backend_names()


DOCTOR_DOCKER = """
args = sys.argv[1:]
if args[:1] == ["version"]:
    print("20.10.24 (API 1.41)")
elif args[:2] == ["compose", "version"]:
    print("2.40.3")
elif args[:2] == ["image", "inspect"] or args[:1] == ["inspect"]:
    present = {"python:3.11-slim-bookworm"}
    print("\\n".join(f"{a} sha256:{abs(hash(a))}" for a in args if a in present))
"""


def test_doctor_checks_the_manifests_base_images(
    fake_exe: Callable[[str, str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_exe("docker", DOCTOR_DOCKER)
    manifest = tmp_path / "claude-bottle.toml"
    manifest.write_text('[bottles.a]\nbase_image = "ubuntu:24.04"\n[bottles.b]\n[agents.c]\nbottle = "a"\n')
    main(["doctor", "--manifest", str(manifest)])
    out = capsys.readouterr().out
    assert "image ubuntu:24.04: missing" in out and "image debian:bookworm-slim: missing" in out
    assert "image python:3.11-slim-bookworm" in out
    main(["doctor", "--manifest", str(tmp_path / "none.toml")])
    captured = capsys.readouterr()
    assert "ubuntu" not in captured.out and "image debian:bookworm-slim" in captured.out
    assert "checking the default base image" in captured.err


def test_compose_missing_for_this_user_is_one_line_naming_the_fix(fake_exe: Callable[[str, str], Path]) -> None:
    from claude_bottle import engine

    fake_exe(
        "docker",
        "sys.stderr.write(\"unknown shorthand flag: 'p' in -p\\nSee 'docker --help'.\\n\"); sys.exit(125)",
    )
    with pytest.raises(BackendError, match=r"^Docker Compose v2 is missing for this user .*scripts/setup as root"):
        engine.compose_ls()


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("unix:///var/run/docker.sock", True),
        ("unix:///nonexistent/docker.sock", True),  # on this machine: unreachable is the engine check's to say
        ("tcp://127.0.0.1:2375", True),
        ("tcp://localhost:2375", True),
        ("tcp://[::1]:2375", True),
        ("tcp://10.1.2.3:2375", False),
        ("ssh://builder@build-server", False),
    ],
)
def test_an_engine_is_local_only_when_it_sees_this_machines_files(endpoint: str, local: bool) -> None:
    from claude_bottle.engine import Context

    assert Context("x", endpoint).local is local


def test_the_engine_comes_from_the_environment_or_a_named_context(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_exe: Callable[[str, str], Path]
) -> None:
    from claude_bottle.engine import Context, context
    from claude_bottle.errors import BottleError

    monkeypatch.setenv("DOCKER_HOST", "tcp://10.1.2.3:2375")
    assert (context().name, context().endpoint, context().local) == ("DOCKER_HOST", "tcp://10.1.2.3:2375", False)
    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    (tmp_path / "config.json").write_text('{"currentContext": "default"}')
    assert context().name == "default"
    # A named context (`start --context`, the manifest's `context`) is asked of the CLI, once.
    fake_exe(
        "docker",
        "sys.stdout.write('ssh://me@build\\n') if sys.argv[1:4] == ['context', 'inspect', 'build'] else sys.exit(1)",
    )
    assert context("build") == Context("build", "ssh://me@build")
    with pytest.raises(BottleError, match=r"Docker context 'nope' does not exist .*docker context create nope"):
        context("nope")
    # Each is reached as itself: a context by name (its TLS stays the CLI's), DOCKER_HOST by endpoint.
    assert Context("build", "ssh://me@build").env() == {"DOCKER_CONTEXT": "build", "DOCKER_HOST": None}
    assert Context("DOCKER_HOST", "tcp://h:2375").env() == {"DOCKER_HOST": "tcp://h:2375", "DOCKER_CONTEXT": None}
    assert Context.from_dict(Context("b", "tcp://h").to_dict()) == Context("b", "tcp://h")
    with pytest.raises(BackendError, match="unreadable"):
        Context.from_dict({"name": "", "endpoint": 3})


def test_every_engine_call_goes_to_the_bottles_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from claude_bottle import engine, process

    seen: list[dict[str, str]] = []

    def run(argv: list[str], **kw: object) -> process.Result:
        env = kw.get("env") or {}
        assert isinstance(env, dict)
        seen.append(process._env(env))
        return process.Result(tuple(argv), 0, "", "")

    monkeypatch.setattr(process, "run", run)
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    engine.docker("ps")
    with engine.on(engine.Context("DOCKER_HOST", "tcp://10.9.9.9:2375")):
        engine.docker("ps")
        with engine.on(engine.Context("far", "ssh://far")):
            engine.client("version")
        engine.docker("ps")
    engine.docker("ps")
    hosts = [(e.get("DOCKER_HOST"), e.get("DOCKER_CONTEXT")) for e in seen]
    local = ("unix:///var/run/docker.sock", None)
    assert hosts == [local, ("tcp://10.9.9.9:2375", None), (None, "far"), ("tcp://10.9.9.9:2375", None), local]


def test_an_unreachable_engine_names_itself(fake_exe: Callable[[str, str], Path]) -> None:
    from claude_bottle import engine

    fake_exe("docker", UNREACHABLE)
    with engine.on(engine.Context("build", "ssh://me@build")), pytest.raises(BackendError) as exc:
        engine.docker("ps")
    assert str(exc.value).startswith("Docker engine not reachable at ssh://me@build (context build)")


# -- gVisor's exec (runsc 0.0~20221219: `docker exec -i` outlives its command) -------------------
HUNG_CLIENT = """
if sys.argv[1] == "inspect":
    sys.stderr.write(os.environ.get("FAKE_INSPECT_ERR", ""))
    print(os.environ.get("FAKE_RUNNING", ""))
    sys.exit(1 if os.environ.get("FAKE_INSPECT_ERR") else 0)
if sys.argv[1] == "exec":
    mark_dir = os.environ.get("FAKE_MARK_DIR")
    if mark_dir:  # the command ends and leaves its mark; the client hangs on regardless
        i = sys.argv.index("bottle-exec")
        open(os.path.join(mark_dir, "exec-" + sys.argv[i + 1]), "w").write("7\\n")
    import time
    time.sleep(60)
"""


@pytest.mark.parametrize(
    ("env", "rc"),
    [
        ({"FAKE_INSPECT_ERR": "Error: No such object: claude-abcde-agent\n"}, None),  # `stop` removed it
        ({"FAKE_RUNNING": "false"}, None),  # it stopped
        ({"FAKE_RUNNING": "true", "FAKE_MARK_DIR": ""}, 7),  # the command ended: its own code
    ],
)
def test_a_gvisor_exec_ends_when_its_command_or_container_does(
    fake_exe: Callable[[str, str], Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    env: dict[str, str],
    rc: int | None,
) -> None:
    import time

    from claude_bottle.bottle.state import StateDir

    state = StateDir("claude-abcde", root=tmp_path / "state")
    (state.path / "run" / "agent").mkdir(parents=True)
    fake_exe("docker", HUNG_CLIENT)
    for k, v in env.items():
        monkeypatch.setenv(k, v or str(state.path / "run" / "agent"))
    t0 = time.monotonic()
    got = DockerBottleBackend._exec_gvisor(state, ["true"], tty=False, workdir=None, env=None)
    assert time.monotonic() - t0 < 10, "the client was left hanging"
    if rc is not None:
        assert got == rc
