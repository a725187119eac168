"""The one way to run an external command: argv lists only, copied environment, logged redacted."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from claude_bottle.errors import BackendError

__all__ = [
    "STDERR_KEPT",
    "TAIL_READ",
    "Missing",
    "Output",
    "Result",
    "TimedOut",
    "capture",
    "check",
    "redact_argv",
    "run",
    "run_interactive",
    "run_streaming",
    "run_to",
    "stream",
]

log = logging.getLogger(__name__)

# Over-redaction is reversible, a leaked secret is not: any KEY=VALUE whose key looks secret.
_SECRET_KEY = re.compile(r"(?i)(key|token|secret|password|passwd|credential|auth)")

_INSTALL_HINTS = {
    "docker": "install Docker (./scripts/setup does it on Debian) or put `docker` on PATH",
    "smolvm": "install smolvm from smol-machines/smolvm releases",
}


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def redact_argv(argv: Sequence[str]) -> list[str]:
    out = []
    for arg in argv:
        key, sep, _ = arg.partition("=")
        out.append(f"{key}=***" if sep and _SECRET_KEY.search(key) else arg)
    return out


def _env(env: Mapping[str, str | None] | None) -> dict[str, str]:
    """This process's environment with `env` over it (a None value removes that variable)."""
    merged = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _missing(argv: Sequence[str]) -> BackendError:
    tool = argv[0]
    hint = _INSTALL_HINTS.get(Path(tool).name, f"install {tool} or put it on PATH")
    return BackendError(f"`{tool}` not found: {hint}")


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str | None] | None = None,
    input: str | None = None,
    timeout: float | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Result:
    """Run argv to completion, capturing text output. Never raises for a non-zero exit."""
    argv = [str(a) for a in argv]
    log.debug("run: %s", " ".join(redact_argv(argv)))
    try:
        proc = subprocess.run(
            argv,
            env=_env(env),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError as exc:
        raise _missing(argv) from exc
    except subprocess.TimeoutExpired as exc:
        raise BackendError(f"`{' '.join(redact_argv(argv[:3]))} ...` timed out after {timeout:.0f}s") from exc
    return Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


class Missing(BackendError):
    """The command's program is not installed (the text names how to get it)."""


class TimedOut(BackendError):
    """The command did not finish within its time limit (it was killed)."""


@dataclass(frozen=True)
class Output:
    """A command's outcome as bytes (git objects, tar streams, NUL-separated listings)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def last_error_line(self) -> str:
        lines = [ln for ln in self.stderr.decode(errors="replace").strip().splitlines() if ln.strip()]
        return lines[-1] if lines else "no message"


def capture(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float | None = None,
    env: Mapping[str, str | None] | None = None,
    only_env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    user: int | None = None,
    group: int | None = None,
) -> Output:
    """Run argv to completion, capturing bytes. `env` goes over this process's environment, `only_env` is the
    whole environment instead (nothing inherited); `user`/`group` run it as them (root only), with no
    supplementary groups. Never raises for a non-zero exit; Missing if the program is not there, TimedOut
    (after killing it) past `timeout`."""
    argv = [str(a) for a in argv]
    log.debug("run: %s", " ".join(redact_argv(argv)))
    try:
        proc = subprocess.run(
            argv,
            env=dict(only_env) if only_env is not None else _env(env),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            cwd=cwd,
            user=user,
            group=(group if group is not None else user) if user is not None else None,
            extra_groups=[] if user is not None else None,
            check=False,
        )
    except FileNotFoundError as exc:
        missing = _missing(argv)
        raise Missing(str(missing)) from exc
    except subprocess.TimeoutExpired as exc:
        raise TimedOut(f"`{' '.join(redact_argv(argv[:3]))} ...` timed out after {timeout:.0f}s") from exc
    return Output(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def check(result: Result, what: str) -> Result:
    """Raise a BackendError naming what failed, its exit code and the last line of stderr."""
    if result.ok:
        return result
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    tail = lines[-1] if lines else "(no error output)"
    raise BackendError(f"{what} failed (exit {result.returncode}): {tail}")


STDERR_KEPT = 64 * 1024  # the tail of a streaming command's stderr kept for its error
TAIL_READ = 1024 * 1024  # what a reader of a stream may leave unread (a tar's end padding) before it is cut off


def stream(
    argv: Sequence[str],
    *,
    feed: Callable[[IO[bytes]], None] | None = None,
    take: Callable[[IO[bytes]], None] | None = None,
    timeout: float,
    env: Mapping[str, str | None] | None = None,
) -> Result:
    """Run argv with `feed` writing its stdin or `take` reading its stdout as a stream (no copy in memory or
    on disk). Its stderr is drained as it comes (a command that says much must never block on a full pipe)
    and its tail kept. The whole transfer has one deadline: past it the command is killed. Output `take`
    leaves unread is read to at most TAIL_READ bytes (a tar's padding): past that the command is killed, not
    drained, so a reader that stopped early (a budget) never waits on the rest. Either way stderr says so."""
    argv = [str(a) for a in argv]
    log.debug("run (stream): %s", " ".join(redact_argv(argv)))
    try:
        proc = subprocess.Popen(
            argv,
            env=_env(env),
            stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
            stdout=subprocess.PIPE if take else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise _missing(argv) from exc
    assert proc.stderr is not None  # noqa: S101 - set by PIPE above
    tail = bytearray()
    stderr = proc.stderr

    def drain() -> None:
        while chunk := stderr.read(8192):
            tail.extend(chunk)
            del tail[:-STDERR_KEPT]

    expired, cut = threading.Event(), False

    def kill() -> None:
        expired.set()
        proc.kill()

    drainer = threading.Thread(target=drain, daemon=True)
    timer = threading.Timer(timeout, kill)
    with proc:  # its pipes closed, whatever happens
        drainer.start()
        timer.start()
        try:
            if feed is not None and proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError):  # it failed early: its stderr says why
                    feed(proc.stdin)
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            if take is not None and proc.stdout is not None:
                take(proc.stdout)
                left = TAIL_READ
                while left > 0 and (chunk := proc.stdout.read(min(65536, left))):
                    left -= len(chunk)
                if left <= 0 and proc.stdout.read(1):
                    cut = True
                    proc.kill()
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
            drainer.join(timeout=5)
    err = tail.decode(errors="replace")
    shown = " ".join(redact_argv(argv[:2]))
    if expired.is_set():
        err += f"\n`{shown} ...` did not finish within {timeout:.0f}s: stopped"
    elif cut:
        err += f"\n`{shown} ...` went on past what was read: stopped"
    return Result(tuple(argv), rc, "", err)


def run_streaming(
    argv: Sequence[str],
    on_line: Callable[[str], None],
    *,
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Result:
    """Run argv, handing each output line (stdout and stderr merged) to on_line as it arrives."""
    argv = [str(a) for a in argv]
    log.debug("run (streaming): %s", " ".join(redact_argv(argv)))
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            argv,
            env=_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
        )
    except FileNotFoundError as exc:
        raise _missing(argv) from exc
    with proc:
        assert proc.stdout is not None  # noqa: S101 - set by PIPE above
        try:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                lines.append(line)
                on_line(line)
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    tail = "\n".join(lines[-40:])
    return Result(tuple(argv), rc, "", tail)


def run_to(argv: Sequence[str], sink: Callable[[bytes], None], *, env: Mapping[str, str | None] | None = None) -> int:
    """Run argv, handing its output (stdout and stderr merged, raw bytes) to sink as it arrives."""
    argv = [str(a) for a in argv]
    log.debug("run (to sink): %s", " ".join(redact_argv(argv)))
    try:
        proc = subprocess.Popen(
            argv, env=_env(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    except FileNotFoundError as exc:
        raise _missing(argv) from exc
    with proc:
        assert proc.stdout is not None  # noqa: S101 - set by PIPE above
        try:
            while chunk := os.read(proc.stdout.fileno(), 65536):
                sink(chunk)
        except BaseException:
            proc.terminate()
            raise
        return proc.wait()


def run_interactive(
    argv: Sequence[str], *, env: Mapping[str, str | None] | None = None, done: Callable[[], bool] | None = None
) -> int:
    """Run argv with this terminal's input, and return its exit code. Its output is a bottle's, so on a
    terminal it goes through the screen filter (terminal.py): the agent never writes to it directly."""
    from claude_bottle.terminal import run_on_terminal

    argv = [str(a) for a in argv]
    log.debug("run (interactive): %s", " ".join(redact_argv(argv)))
    try:
        return run_on_terminal(argv, env=_env(env), done=done)
    except FileNotFoundError as exc:
        raise _missing(argv) from exc
