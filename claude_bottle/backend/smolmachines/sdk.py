"""The smolmachines SDK (PyPI `smolmachines`, imported as `smol`) behind the few calls this backend makes.

Imported lazily: without the optional extra the backend says how to install it, and `ls`, `cleanup` and
`doctor` go on without it. Every call names the local target (without it `Machine.list` means the cloud),
and every SDK error becomes one BackendError line. Tests put a fake of this surface in `_module`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from claude_bottle.errors import BackendError

__all__ = ["INSTALL", "Exec", "Mount", "Summary", "Vm"]

INSTALL = "pip install 'claude-bottle[smolmachines]'"

_module: Any = None


def sdk() -> Any:
    """The `smol` module, or one line naming the install command."""
    global _module  # noqa: PLW0603 - imported once, on first use
    if _module is None:
        try:
            _module = importlib.import_module("smol")
        except ImportError as exc:
            raise BackendError(f"the smolmachines backend needs the smolmachines SDK: {INSTALL}") from exc
    return _module


def installed() -> bool:
    try:
        sdk()
    except BackendError:
        return False
    return True


@dataclass(frozen=True)
class Summary:
    """One machine as `Machine.list` reports it, without booting it."""

    name: str
    state: str  # created | running | stopped | failed | unreachable | frozen ...
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class Exec:
    code: int
    stdout: str
    stderr: str


def explain(text: str) -> str | None:
    """What a failed boot means on this host, in words that name the fix (the SDK's own text follows)."""
    if "KvmOpen(Error(13))" in text:
        return "the VMM's unprivileged uid cannot open /dev/kvm (chmod 0666 /dev/kvm; see `claude-bottle doctor`)"
    if "before the agent was ready" in text or "did not become ready" in text or "boot" in text:
        from claude_bottle.backend.smolmachines.host import host_virtualisation

        virt = host_virtualisation()
        if not virt.ok:
            return f"{virt.detail} ({virt.fix})"
    return None


def _one_line(what: str, exc: BaseException) -> BackendError:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return BackendError(f"smolmachines: {what}; the SDK said: {text[-300:]}")


class Vm:
    """The SDK's local engine, as this backend uses it."""

    def __init__(self) -> None:
        self.smol = sdk()

    def _local(self) -> Any:
        return self.smol.ConnectOptions(target="local", wait_for_ports=False)

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (self.smol.SmolError, OSError, ValueError)

    def version(self) -> str:
        return str(getattr(self.smol, "__version__", "unknown"))

    def availability(self) -> tuple[bool, str | None, str | None]:
        ok, code, reason = self.smol.local_availability()
        return bool(ok), code, reason

    def list(self, labels: Mapping[str, str]) -> list[Summary]:
        try:
            rows = self.smol.Machine.list(self._local(), labels=dict(labels))
        except self._errors() as exc:
            raise _one_line("listing machines", exc) from exc
        return [Summary(r.name, str(r.state), dict(r.labels or {})) for r in rows]

    def create(
        self,
        *,
        name: str,
        image: str,
        labels: Mapping[str, str],
        command: Sequence[str],
        mounts: Sequence[Mount],
        cpus: int,
        memory_mb: int,
        allow_cidrs: Sequence[str],
        env: Mapping[str, str],
        workdir: str,
        user: str,
        ready_timeout: float,
    ) -> None:
        """Create and boot a machine that outlives this process (persistent, detached), its network scoped
        to `allow_cidrs` and nothing else."""
        s = self.smol
        config = s.MachineConfig(
            name=name,
            image=image,
            labels=dict(labels),
            command=list(command),
            mounts=[s.MountSpec(source=m.source, target=m.target, read_only=m.read_only) for m in mounts],
            # allow_cidrs alone turns networking on, scoped to the list; `network` would open it all.
            resources=s.ResourceSpec(cpus=cpus, memory_mb=memory_mb, allow_cidrs=list(allow_cidrs)),
            env=dict(env),
            workdir=workdir,
            user=user,
            persistent=True,
            detach=True,
            ready_timeout_seconds=ready_timeout,
            wait_for_ports=False,
        )
        try:
            s.Machine.create(config, self._local())
        except self._errors() as exc:
            why = explain(" ".join(str(exc).split()))
            raise _one_line(f"machine {name} did not start{': ' + why if why else ''}", exc) from exc

    def _connect(self, name: str) -> Any:
        try:
            return self.smol.Machine.connect(name, self._local())
        except self._errors() as exc:
            raise _one_line(f"machine {name}", exc) from exc

    def exec(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str], workdir: str, user: str, timeout: float
    ) -> Exec:
        m = self._connect(name)
        opts = self.smol.ExecOptions(env=dict(env), workdir=workdir, user=user, timeout=timeout)
        try:
            r = m.exec(list(argv), opts)
        except self._errors() as exc:
            raise _one_line(f"exec in {name}", exc) from exc
        return Exec(int(r.exit_code), str(r.stdout), str(r.stderr))

    def exec_stream(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        workdir: str,
        user: str,
        sink: Callable[[str, str], None],
        stdin: bytes = b"",
    ) -> int:
        """Run a command, handing its output to `sink(kind, text)` as it comes; its exit code."""
        m = self._connect(name)
        opts = self.smol.ExecOptions(env=dict(env), workdir=workdir, user=user, stdin=stdin or None)
        code = 255
        try:
            with m.exec_stream(list(argv), opts) as stream:
                for event in stream:
                    kind = event.get("kind")
                    if kind in ("stdout", "stderr"):
                        sink(kind, str(event.get("data", "")))
                    elif kind == "exit":
                        code = int(event.get("exit_code", 255))
                    elif kind == "error":
                        raise BackendError(f"smolmachines: exec in {name}: {event.get('message', 'failed')}")
        except self._errors() as exc:
            raise _one_line(f"exec in {name}", exc) from exc
        return code

    def delete(self, name: str) -> None:
        """Stop and delete a machine by name without booting it; one that does not exist is no error."""
        try:
            self.smol.Machine.delete_by_name(name, self._local())
        except self._errors() as exc:
            raise _one_line(f"deleting machine {name}", exc) from exc
