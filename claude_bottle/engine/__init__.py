"""The one Docker engine client: every `docker` / `docker compose` command line is built here, run through
`process`, and turned into one error type or typed rows.

An unreachable engine is one clear error wherever it happens; any other failure carries the argv, the
exit code and stderr, and the caller decides whether it matters (`check`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from claude_bottle import process
from claude_bottle.errors import BackendError, BottleError

__all__ = [
    "ComposeProject",
    "Context",
    "DockerError",
    "NetworkRow",
    "PsRow",
    "VolumeRow",
    "check",
    "compose_argv",
    "compose_ls",
    "context",
    "docker",
    "engine_hint",
    "exec_argv",
    "image_ids",
    "network_rows",
    "on",
    "parse_labels",
    "pipe_in",
    "pipe_out",
    "ps_rows",
    "volume_rows",
]

_UNREACHABLE = re.compile(
    r"Cannot connect to the Docker daemon|Is the docker daemon running|"
    r"error during connect|connect: no such file or directory|permission denied while trying"
)


class DockerError(BackendError):
    """A `docker` command that failed: what was run, how it ended, and what it said."""

    def __init__(self, what: str, result: process.Result) -> None:
        lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
        tail = lines[-1] if lines else "(no error output)"
        super().__init__(f"{what} failed (exit {result.returncode}): {tail}")
        self.argv = result.argv
        self.returncode = result.returncode
        self.stderr = result.stderr


# What the docker CLI says when its Compose v2 plugin is not installed for this user: it reads `compose`
# as an unknown command, or `compose -p` as its own unknown flag ("Run 'docker --help' ...").
_NO_COMPOSE = re.compile(r"is not a docker command|unknown shorthand flag: 'p' in -p|unknown command \"compose\"")
COMPOSE_HINT = (
    "Docker Compose v2 is missing for this user (`docker compose version` fails): run ./scripts/setup as "
    "root (it installs it for every user), or install Debian's docker-compose-plugin"
)


def _raise_known(args: Sequence[str], result: process.Result) -> None:
    if result.ok:
        return
    if _UNREACHABLE.search(result.stderr):
        raise BackendError(engine_hint())
    if args and args[0] == "compose" and _NO_COMPOSE.search(result.stderr):
        raise BackendError(COMPOSE_HINT)


def engine_hint() -> str:
    if _target is not None:
        return (
            f"Docker engine not reachable at {_target.endpoint} (context {_target.name}): start it, or check "
            "the network to it"
        )
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return f"Docker engine not reachable at {host}: start it (./scripts/setup does) or set DOCKER_HOST"


# The engine every call below goes to: None is whatever the environment names (DOCKER_HOST, the current
# context); `on(ctx)` sends them to a bottle's recorded engine instead. A module global, not a context
# variable, so the threads of a parallel cleanup inherit it; engines are visited one after another.
_target: Context | None = None


@contextlib.contextmanager
def on(ctx: Context | None) -> Iterator[None]:
    """Every engine call in this block goes to `ctx` (None: the environment's engine)."""
    global _target  # noqa: PLW0603 - see _target
    before, _target = _target, ctx
    try:
        yield
    finally:
        _target = before


def _env(env: Mapping[str, str | None] | None = None) -> dict[str, str | None]:
    out: dict[str, str | None] = dict(_target.env() if _target is not None else {})
    out.update(env or {})
    return out


def docker(*args: str, timeout: float | None = 120, env: dict[str, str] | None = None) -> process.Result:
    """`docker ARGS`. An unreachable engine raises one clear error; any other outcome is returned."""
    result = process.run(["docker", *args], timeout=timeout, env=_env(env))
    _raise_known(args, result)
    return result


STDERR_KEPT = process.STDERR_KEPT


def _stream(
    args: Sequence[str],
    *,
    feed: Callable[[IO[bytes]], None] | None = None,
    take: Callable[[IO[bytes]], None] | None = None,
    timeout: float,
) -> process.Result:
    """`docker ARGS` as a stream (process.stream: stderr drained, one deadline, a reader's early stop never
    waits on the rest), on this block's engine."""
    result = process.stream(["docker", *args], feed=feed, take=take, timeout=timeout, env=_env())
    _raise_known(args, result)
    return result


def pipe_in(args: Sequence[str], write: Callable[[IO[bytes]], None], *, timeout: float = 1800) -> process.Result:
    """`docker ARGS` with `write` producing its standard input as a stream (a tar of files, no copy in
    memory or on disk)."""
    return _stream(args, feed=write, timeout=timeout)


def pipe_out(args: Sequence[str], read: Callable[[IO[bytes]], None], *, timeout: float = 1800) -> process.Result:
    """`docker ARGS` with `read` consuming its standard output as a stream."""
    return _stream(args, take=read, timeout=timeout)


@dataclass(frozen=True)
class Context:
    """The engine the docker CLI talks to: DOCKER_HOST, else the current context (DOCKER_CONTEXT, then
    the CLI's config), and its endpoint. Recorded per bottle (`to_dict`), so every later verb on that
    bottle reaches the same engine whatever the environment says then."""

    name: str
    endpoint: str

    def env(self) -> dict[str, str | None]:
        """The environment that sends the docker CLI to this engine: a named context as itself (its TLS
        material stays the CLI's), DOCKER_HOST as its endpoint."""
        if self.name == "DOCKER_HOST":
            return {"DOCKER_HOST": self.endpoint, "DOCKER_CONTEXT": None}
        return {"DOCKER_CONTEXT": self.name, "DOCKER_HOST": None}

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "endpoint": self.endpoint}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Context:
        name, endpoint = data.get("name"), data.get("endpoint")
        if not isinstance(name, str) or not isinstance(endpoint, str) or not name or not endpoint:
            raise BackendError("the bottle's recorded Docker engine (engine.json) is unreadable")
        return cls(name, endpoint)

    @property
    def local(self) -> bool:
        """Does the engine see this machine's files (a Unix socket, which is on this machine whether or not
        an engine answers there, or TCP to this machine's loopback)?"""
        scheme, _, rest = self.endpoint.partition("://")
        if scheme == "unix":
            return True
        if scheme == "tcp":
            host = rest.rsplit(":", 1)[0].strip("[]")
            return host in ("localhost", "::1") or host.startswith("127.")
        return False


def context(name: str | None = None) -> Context:
    """The engine `name` (a docker context) names, else the environment's. Without a subprocess when
    nothing names another context (start's own path stays fast)."""
    if name:
        if name == "default":
            return Context("default", "unix:///var/run/docker.sock")
        got = client("context", "inspect", name, "--format", "{{.Endpoints.docker.Host}}")
        if not got.ok:
            raise BottleError(
                f"Docker context {name!r} does not exist (docker context ls lists them): create it with "
                f"`docker context create {name} --docker host=...` or name another"
            )
        return Context(name, got.stdout.strip())
    if os.environ.get("DOCKER_HOST"):
        return Context("DOCKER_HOST", os.environ["DOCKER_HOST"])
    name = os.environ.get("DOCKER_CONTEXT", "")
    if not name:
        config = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
        try:
            name = str(json.loads(config.read_text(encoding="utf-8")).get("currentContext") or "")
        except (OSError, ValueError, AttributeError):
            name = ""
    if name in ("", "default"):
        return Context("default", "unix:///var/run/docker.sock")
    got = client("context", "inspect", name, "--format", "{{.Endpoints.docker.Host}}")
    return Context(name, got.stdout.strip() if got.ok else "unknown (docker context inspect failed)")


def client(*args: str) -> process.Result:
    """`docker ARGS` that does not need the engine (versions of the client and its plugins)."""
    return process.run(["docker", *args], timeout=20, env=_env())


def check(result: process.Result, what: str) -> process.Result:
    if not result.ok:
        raise DockerError(what, result)
    return result


def streaming(
    args: Sequence[str], on_line: Callable[[str], None], *, env: dict[str, str | None] | None = None
) -> process.Result:
    result = process.run_streaming(["docker", *args], on_line, env=_env(env))
    _raise_known(args, result)
    return result


def interactive(args: Sequence[str], *, done: Callable[[], bool] | None = None) -> int:
    """`docker ARGS` with this terminal's input; its output through the screen filter (process.py). `done`:
    the command is over though the client has not returned (terminal.run_on_terminal)."""
    return process.run_interactive(["docker", *args], env=_env(), done=done)


def to_sink(args: Sequence[str], sink: Callable[[bytes], None]) -> int:
    """`docker ARGS`, its output handed to sink as it arrives."""
    return process.run_to(["docker", *args], sink, env=_env())


def compose_argv(project: str, compose_file: Path, project_dir: Path, *args: str) -> list[str]:
    return ["compose", "-p", project, "-f", str(compose_file), "--project-directory", str(project_dir), *args]


def exec_argv(
    container: str,
    argv: Sequence[str],
    *,
    tty: bool = False,
    interactive: bool = False,
    workdir: str | None = None,
    env: dict[str, str] | None = None,
) -> list[str]:
    cmd = ["exec"]
    if interactive:
        cmd.append("-i")
    if tty:
        cmd.append("-t")
    if workdir:
        cmd += ["-w", workdir]
    for k, v in (env or {}).items():
        cmd += ["-e", f"{k}={v}"]
    return [*cmd, container, *argv]


def parse_labels(text: str) -> dict[str, str]:
    """The `Labels` field of docker's JSON listings ("k=v,k=v") as a dict."""
    out = {}
    for part in (text or "").split(","):
        k, sep, v = part.partition("=")
        if sep:
            out[k] = v
    return out


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class PsRow:
    id: str
    name: str
    state: str
    labels: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> list[PsRow]:
        """`docker ps --format '{{json .}}'` output."""
        return [
            cls(r.get("ID", ""), r.get("Names", ""), r.get("State", "unknown"), parse_labels(r.get("Labels", "")))
            for r in _json_lines(text)
        ]


@dataclass(frozen=True)
class NetworkRow:
    id: str
    name: str
    labels: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> list[NetworkRow]:
        """`docker network ls --format '{{json .}}'` output."""
        return [cls(r.get("ID", ""), r.get("Name", ""), parse_labels(r.get("Labels", ""))) for r in _json_lines(text)]


@dataclass(frozen=True)
class VolumeRow:
    name: str
    labels: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> list[VolumeRow]:
        """`docker volume ls --format '{{json .}}'` output."""
        return [cls(r.get("Name", ""), parse_labels(r.get("Labels", ""))) for r in _json_lines(text)]


@dataclass(frozen=True)
class ComposeProject:
    name: str
    status: str
    config: str

    @classmethod
    def parse(cls, text: str) -> list[ComposeProject]:
        """`docker compose ls --all --format json` output."""
        return [cls(p["Name"], p.get("Status", ""), p.get("ConfigFiles", "")) for p in json.loads(text or "[]")]


def ps_rows(*filters: str) -> list[PsRow]:
    args = ["ps", "-a"]
    for f in filters:
        args += ["--filter", f]
    return PsRow.parse(check(docker(*args, "--format", "{{json .}}"), "docker ps").stdout)


def network_rows(*filters: str) -> list[NetworkRow]:
    args = ["network", "ls"]
    for f in filters:
        args += ["--filter", f]
    return NetworkRow.parse(check(docker(*args, "--format", "{{json .}}"), "docker network ls").stdout)


def volume_rows(*filters: str) -> list[VolumeRow]:
    args = ["volume", "ls"]
    for f in filters:
        args += ["--filter", f]
    return VolumeRow.parse(check(docker(*args, "--format", "{{json .}}"), "docker volume ls").stdout)


def compose_ls() -> list[ComposeProject]:
    return ComposeProject.parse(check(docker("compose", "ls", "--all", "--format", "json"), "docker compose ls").stdout)


def image_ids(refs: Sequence[str]) -> dict[str, str]:
    """Ids of the given image references that exist, from one engine call."""
    if not refs:
        return {}
    result = docker("image", "inspect", "--format", "{{.Id}}", *refs)
    # Output has one id per found image, in order; missing ones are named on stderr.
    missing = {r for r in refs if f"No such image: {r}" in result.stderr}
    found = [r for r in refs if r not in missing]
    ids = result.stdout.split()
    return dict(zip(found, ids, strict=False)) if len(ids) == len(found) else {}


DEFAULT_SUBNET_POOL = "10.213.0.0/16"


def pick_subnet() -> str:
    """A random /28 from CLAUDE_BOTTLE_SUBNET_POOL (default 10.213.0.0/16) for a bottle's own network (a
    Compose project's, or a microVM's sidecar bundle's)."""
    import ipaddress
    import secrets

    pool = ipaddress.ip_network(os.environ.get("CLAUDE_BOTTLE_SUBNET_POOL") or DEFAULT_SUBNET_POOL)
    count = 2 ** (28 - pool.prefixlen) if pool.prefixlen <= 28 else 1
    base = int(pool.network_address) + secrets.randbelow(count) * 16
    return f"{ipaddress.ip_address(base)}/28"


def require_networks(names: Sequence[str], *, where: str = "") -> None:
    """Each Docker network a manifest's egress.networks names exists on the current engine, or one line
    naming the fix (checked before anything is built, by every backend whose guard joins them)."""
    from claude_bottle.errors import BottleError

    for net in names:
        if not docker("network", "inspect", "--format", "{{.Name}}", net).ok:
            raise BottleError(
                f"egress.networks: Docker network {net!r} does not exist{where}: create it "
                f"(docker network create {net}) or remove it from the manifest"
            )
