"""A fake of the smolmachines SDK surface the backend uses (`smol`, checked against smolmachines 1.32.2:
`ConnectOptions`, `MachineConfig`, `MountSpec`, `ResourceSpec`, `ExecOptions`, `Machine.create/list/connect/
delete_by_name`, `exec`, `exec_stream`, `stop`, `delete`, `SmolError`, `local_availability`).

Machines live in a JSON file named by FAKE_SMOL_DB (the real SDK's host database is shared across
processes, so is this one): the CLI run as a subprocess and the test see the same machines. Every call is
recorded there. No VM boots:
- FAKE_SMOL_BOOT_FAIL=1: `create` leaves a failed record and raises, as a host that cannot boot does;
- FAKE_SMOL_EXEC=host: `exec` runs the command on the host, with the guest's environment and the guest's
  paths mapped to their mount sources (HOME to a directory of the fake's own), so the egress it makes
  goes through the real sidecar guard; otherwise `exec` answers from the scripted `replies` (default 0).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__version__ = "1.32.2-fake"


class SmolError(Exception):
    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"[{code}] {message}" if message else f"[{code}]")
        self.code = code


@dataclass
class ConnectOptions:
    target: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    wait_for_ports: bool = True


@dataclass
class MountSpec:
    source: str
    target: str
    read_only: bool = False


@dataclass
class ResourceSpec:
    cpus: int | None = None
    memory_mb: int | None = None
    network: bool | None = None
    allow_cidrs: list[str] | None = None
    allow_hosts: list[str] | None = None


@dataclass
class MachineConfig:
    name: str | None = None
    image: str | None = None
    labels: dict[str, str] | None = None
    command: list[str] | None = None
    mounts: list[MountSpec] | None = None
    resources: ResourceSpec | None = None
    network: bool | None = None
    persistent: bool = False
    detach: bool = False
    ready_timeout_seconds: float = 120.0
    wait_for_ports: bool = True
    env: dict[str, str] | None = None
    workdir: str | None = None
    user: str | None = None


@dataclass
class ExecOptions:
    env: dict[str, str] | None = None
    workdir: str | None = None
    timeout: float | None = None
    user: str | None = None
    stdin: str | bytes | None = None


@dataclass
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str


@dataclass
class MachineSummary:
    id: str
    name: str
    state: str
    labels: dict[str, str] = field(default_factory=dict)


def local_availability() -> tuple[bool, str | None, str | None]:
    if os.environ.get("FAKE_SMOL_UNAVAILABLE"):
        return False, "KVM_UNAVAILABLE", "fake: no usable /dev/kvm"
    return True, None, None


# -- the shared "host database" -------------------------------------------------------------------
def _db_path() -> Path:
    path = os.environ.get("FAKE_SMOL_DB")
    if not path:
        raise SmolError("FAKE", "FAKE_SMOL_DB is not set")
    return Path(path)


@contextlib.contextmanager
def _db() -> Iterator[dict[str, Any]]:
    path = _db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_suffix(".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {"machines": {}, "calls": [], "replies": {}}
        yield data
        path.write_text(json.dumps(data, indent=1))


def _local(conn: ConnectOptions | None) -> None:
    if conn is None or conn.target != "local":
        raise SmolError("FAKE", "the backend must name the local target (the default lists the cloud)")


class _Stream:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self._events = iter(events)

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._events)

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class Machine:
    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @classmethod
    def create(cls, config: MachineConfig | None = None, conn: ConnectOptions | None = None) -> Machine:
        _local(conn)
        config = config or MachineConfig()
        name = config.name or "smol-anon"
        with _db() as db:
            db["calls"].append(["create", name])
            if name in db["machines"]:
                raise SmolError("ALREADY_EXISTS", f"machine {name} exists")
            failing = bool(os.environ.get("FAKE_SMOL_BOOT_FAIL"))
            db["machines"][name] = {
                "state": "failed" if failing else "running",
                "labels": dict(config.labels or {}),
                "config": dataclasses.asdict(config),
            }
        if failing:
            raise SmolError("BOOT_FAILED", "boot process exited (code 1) before the agent was ready")
        return cls(name)

    @staticmethod
    def list(conn: ConnectOptions | None = None, labels: dict[str, str] | None = None) -> list[MachineSummary]:
        _local(conn)
        with _db() as db:
            db["calls"].append(["list", labels or {}])
            rows = db["machines"].items()
            return [
                MachineSummary(n, n, m["state"], dict(m["labels"]))
                for n, m in sorted(rows)
                if all(m["labels"].get(k) == v for k, v in (labels or {}).items())
            ]

    @classmethod
    def connect(cls, machine_id: str, conn: ConnectOptions | None = None) -> Machine:
        _local(conn)
        with _db() as db:
            db["calls"].append(["connect", machine_id])
            m = db["machines"].get(machine_id)
            if m is None:
                raise SmolError("NOT_FOUND", f"no machine {machine_id}")
            m["state"] = "running"  # as the SDK: connecting boots a stopped machine
        return cls(machine_id)

    @staticmethod
    def delete_by_name(machine_id: str, conn: ConnectOptions | None = None, drain_secs: float | None = None) -> None:
        _local(conn)
        with _db() as db:
            db["calls"].append(["delete", machine_id])
            db["machines"].pop(machine_id, None)

    def stop(self) -> None:
        with _db() as db:
            db["calls"].append(["stop", self._name])
            db["machines"][self._name]["state"] = "stopped"

    def delete(self) -> None:
        Machine.delete_by_name(self._name, ConnectOptions(target="local"))

    def _run(self, command: list[str], opts: ExecOptions | None) -> ExecResult:
        opts = opts or ExecOptions()
        with _db() as db:
            stdin = opts.stdin.decode() if isinstance(opts.stdin, bytes) else opts.stdin
            db["calls"].append(["exec", self._name, command, opts.user, opts.workdir, stdin])
            m = db["machines"][self._name]
            reply = db["replies"].get(" ".join(command))
        if os.environ.get("FAKE_SMOL_EXEC") != "host":
            code, out = reply if reply else (0, "")
            return ExecResult(int(code), str(out), "")
        return self._on_host(m, command, opts)

    def _on_host(self, m: dict[str, Any], command: list[str], opts: ExecOptions) -> ExecResult:
        mounts = sorted(m["config"]["mounts"] or [], key=lambda x: -len(x["target"]))
        home = _db_path().parent / f"{self._name}-home"
        home.mkdir(exist_ok=True)

        def host(path: str) -> str:
            for mt in mounts:
                if path == mt["target"] or path.startswith(mt["target"] + "/"):
                    return mt["source"] + path[len(mt["target"]) :]
            return path

        env = {**(m["config"]["env"] or {}), **(opts.env or {})}
        env = {k: host(v) if v.startswith("/") else v for k, v in env.items()}
        env["HOME"] = str(home)
        env["PATH"] = os.environ["PATH"]
        cwd = host(opts.workdir or m["config"]["workdir"] or "/")
        data = opts.stdin.decode() if isinstance(opts.stdin, bytes) else opts.stdin
        r = subprocess.run(
            command,
            env=env,
            cwd=cwd,
            input=data,
            capture_output=True,
            text=True,
            timeout=opts.timeout or 60,
            check=False,
        )
        return ExecResult(r.returncode, r.stdout, r.stderr)

    def exec(self, command: list[str], opts: ExecOptions | None = None) -> ExecResult:
        return self._run(command, opts)

    def exec_stream(self, command: list[str], opts: ExecOptions | None = None) -> _Stream:
        r = self._run(command, opts)
        events: list[dict[str, Any]] = []
        if r.stdout:
            events.append({"kind": "stdout", "data": r.stdout})
        if r.stderr:
            events.append({"kind": "stderr", "data": r.stderr})
        events.append({"kind": "exit", "exit_code": r.exit_code})
        return _Stream(events)
