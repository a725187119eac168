"""The engine's container runtimes, as `docker info` reports them: whether the gVisor runtime a bottle
asks for (`isolation = "gvisor"`) is registered, and registered the one way the bottle's seal holds.

The runtime is ours by name (`claude-bottle-gvisor`, or CLAUDE_BOTTLE_GVISOR_RUNTIME): an operator's own
`runsc` entry may use gVisor's network stack, which takes the namespace's interfaces over and sends raw
frames past the iptables fence the bottle's net container puts in that namespace. So the entry must run
runsc with `--network=host` (the sandbox's sockets are the namespace's, fenced like runc's); anything
else is refused in one line before any work (docs/design/isolation.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from claude_bottle.engine import docker
from claude_bottle.errors import BottleError

__all__ = ["ISOLATIONS", "Runtime", "gvisor_runtime", "judge_gvisor", "require_gvisor", "runtimes"]

ISOLATIONS = ("container", "gvisor")
DEFAULT_GVISOR_RUNTIME = "claude-bottle-gvisor"
FIX = "run ./scripts/setup on the engine's host (it installs runsc and registers it), or see docs/design/isolation.md"


def gvisor_runtime() -> str:
    return os.environ.get("CLAUDE_BOTTLE_GVISOR_RUNTIME") or DEFAULT_GVISOR_RUNTIME


@dataclass(frozen=True)
class Runtime:
    """One runtime the engine registered (`docker info`'s Runtimes): the binary and its arguments."""

    path: str
    args: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> dict[str, Runtime]:
        """`docker info --format '{{json .Runtimes}}'`; {} when unreadable, an odd entry left out."""
        try:
            found = json.loads(text)
        except ValueError:
            return {}
        out = {}
        for name, entry in (found if isinstance(found, dict) else {}).items():
            if isinstance(entry, dict):
                raw = entry.get("runtimeArgs")
                args = tuple(str(a) for a in raw) if isinstance(raw, list) else ()
                out[str(name)] = cls(str(entry.get("path") or ""), args)
        return out


def runtimes() -> dict[str, Runtime]:
    """The engine's registered runtimes by name; {} when unreadable."""
    r = docker("info", "--format", "{{json .Runtimes}}", timeout=30)
    return Runtime.parse(r.stdout) if r.ok else {}


def _network_flag(args: Sequence[str]) -> str:
    """The value of runsc's --network among its arguments (the last one wins, as in runsc's flag parsing);
    "sandbox" (runsc's default) when none is given."""
    value = "sandbox"
    it = iter(args)
    for a in it:
        name, eq, rest = a.lstrip("-").partition("=")
        if not a.startswith("-") or name != "network":
            continue
        value = rest if eq else next(it, "sandbox")
    return value


def judge_gvisor(found: Mapping[str, Runtime], name: str, *, where: str = "") -> str | None:
    """Why the engine's runtime `name` cannot carry a gVisor bottle, or None when it can."""
    entry = found.get(name)
    if entry is None:
        have = ", ".join(sorted(found)) or "none"
        return f'isolation = "gvisor": the engine{where} has no runtime {name!r} (it has: {have}): {FIX}'
    path, args = entry.path, entry.args
    if "runsc" not in Path(path).name:
        return f'isolation = "gvisor": the engine{where}\'s runtime {name!r} runs {path!r}, not runsc: {FIX}'
    if _network_flag(args) != "host":
        return (
            f'isolation = "gvisor": the engine{where}\'s runtime {name!r} runs runsc without --network=host '
            "(gVisor's own network stack would send the agent's packets past the bottle's firewall): "
            f"register it with --network=host ({FIX})"
        )
    return None


def require_gvisor(*, where: str = "") -> None:
    """One line naming the fix when the current engine cannot run a gVisor bottle (before any build)."""
    why = judge_gvisor(runtimes(), gvisor_runtime(), where=where)
    if why is not None:
        raise BottleError(why)


def gvisor_report(image: str) -> list[tuple[str, bool, str, str]]:
    """What `doctor` says about gVisor on the current engine: (name, ok, detail, fix) rows, the last a
    probe container (of `image`) that must boot and report a kernel that is not the host's."""
    name = gvisor_runtime()
    found = runtimes()
    why = judge_gvisor(found, name)
    entry = found.get(name) or Runtime("", ())
    args, path = entry.args, entry.path
    platform = next((a.partition("=")[2] for a in args if a.startswith("--platform=")), "ptrace (runsc's default)")
    version = "version unknown (runsc is on the engine's host)"
    if path and Path(path).is_absolute() and os.access(path, os.X_OK):
        from claude_bottle import process

        r = process.run([path, "--version"], timeout=20)
        version = r.stdout.splitlines()[0] if r.ok and r.stdout else version
    if why is not None:
        return [
            ("gvisor runtime", False, why.partition(": ")[2], "./scripts/setup (as root) installs and registers it")
        ]
    rows = [("gvisor runtime", True, f"{name}: {path}, {version}, platform {platform}, --network=host", "")]
    probe = docker(
        "run", "--rm", "--runtime", name, "--network", "none", "--label", "claude-bottle.probe=gvisor",
        image, "sh", "-c", "uname -r; ls /etc/hostname >/dev/null 2>&1 && echo statx-ok || echo statx-broken",
        timeout=120,
    )  # fmt: skip
    out = probe.stdout.split()
    kernel = out[0] if out else ""
    booted = probe.ok and kernel != "" and kernel != os.uname().release
    tail = (probe.stderr.strip().splitlines() or ["no output"])[-1]
    rows.append(
        (
            "gvisor probe",
            booted,
            f"a container under {name} boots, kernel {kernel} (the host's is {os.uname().release})"
            if booted
            else f"a probe container under {name} did not boot: {tail}",
            "see /var/log/claude-bottle-dockerd.log; a runsc older than the host kernel fails with 'cannot run "
            "with network enabled in root network namespace' unless registered with --network=host",
        )
    )
    if booted:
        # Measured with Debian's runsc 0.0~20221219 on a 6.x host: statx answers EINVAL, so `ls FILE` and
        # `stat FILE` fail in the agent (coreutils calls statx; glibc falls back only on ENOSYS).
        ok = out[-1:] == ["statx-ok"]
        rows.append(
            (
                "gvisor file status",
                ok,
                "ls FILE and stat FILE work in the sandbox"
                if ok
                else "this runsc answers statx with 'Invalid argument': ls FILE, stat FILE fail in the agent",
                "install a newer runsc (gVisor's release-2023 or later, from gvisor.dev) and rerun ./scripts/setup",
            )
        )
    return rows
