"""The one Docker engine client: every `docker` / `docker compose` command line is built here, run through
`process`, and turned into one error type or typed rows.

An unreachable engine is one clear error wherever it happens; any other failure carries the argv, the
exit code and stderr, and the caller decides whether it matters (`check`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import process
from ...errors import BackendError

__all__ = [
    "ComposeProject",
    "Context",
    "DockerError",
    "NetworkRow",
    "PsRow",
    "check",
    "compose_argv",
    "compose_ls",
    "context",
    "docker",
    "engine_hint",
    "exec_argv",
    "image_ids",
    "network_rows",
    "parse_labels",
    "ps_rows",
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
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return f"Docker engine not reachable at {host}: start it (./scripts/setup does) or set DOCKER_HOST"


def docker(*args: str, timeout: float | None = 120, env: dict[str, str] | None = None) -> process.Result:
    """`docker ARGS`. An unreachable engine raises one clear error; any other outcome is returned."""
    result = process.run(["docker", *args], timeout=timeout, env=env)
    _raise_known(args, result)
    return result


@dataclass(frozen=True)
class Context:
    """The engine the docker CLI talks to: DOCKER_HOST, else the current context (DOCKER_CONTEXT, then
    the CLI's config), and its endpoint."""

    name: str
    endpoint: str

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


def context() -> Context:
    """Without a subprocess when nothing names another context (start's own path stays fast)."""
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
    return process.run(["docker", *args], timeout=20)


def check(result: process.Result, what: str) -> process.Result:
    if not result.ok:
        raise DockerError(what, result)
    return result


def streaming(
    args: Sequence[str], on_line: Callable[[str], None], *, env: dict[str, str] | None = None
) -> process.Result:
    result = process.run_streaming(["docker", *args], on_line, env=env)
    _raise_known(args, result)
    return result


def interactive(args: Sequence[str]) -> int:
    """`docker ARGS` with this terminal's input; its output through the screen filter (process.py)."""
    return process.run_interactive(["docker", *args])


def to_sink(args: Sequence[str], sink: Callable[[bytes], None]) -> int:
    """`docker ARGS`, its output handed to sink as it arrives."""
    return process.run_to(["docker", *args], sink)


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
