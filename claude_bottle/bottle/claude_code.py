"""Claude Code in a bottle, in one place: which version goes into the agent image ("latest" resolved to a
version number, cached for a while, so a newer release rebuilds the image), its first-run settings, its
command line, and its session in tmux (started, attached to, its exit code read back)."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from claude_bottle.bottle.state import BottleRecord, StateDir, bottle_home, pid_alive, write_private

if TYPE_CHECKING:
    from claude_bottle.manifest import AgentSpec

__all__ = [
    "EXIT_FILE",
    "HOST_EXIT_FILE",
    "NORMAL_ENDS",
    "RUN_END_FILE",
    "RUN_LOG",
    "SESSION",
    "UNREADABLE_EXIT",
    "attach_argv",
    "claude_argv",
    "notice_crash",
    "parse_exit_code",
    "resolve_version",
    "run_end",
    "seed_config",
    "terminal_env",
]

SESSION = "claude"  # the tmux session holding claude inside the bottle
EXIT_FILE = "/tmp/claude-bottle-exit"  # noqa: S108 - inside the agent container, written by bottle-run
RUN_LOG = "/home/claude/.claude/bottle-run.log"  # a detached headless run's output (state dir: claude-home)
# claude's own ways out of an interactive session: /exit (0) and Ctrl-C twice (130): the user ended it.
NORMAL_ENDS = (0, 130)
HOST_EXIT_FILE = "bottle-run.exit"  # in claude-home: bottle-run leaves claude's exit code there
RUN_END_FILE = "run-end"  # in the state dir: a foreground run's exit code, as the CLI that ran it saw it
UNREADABLE_EXIT = 137  # what an unreadable exit file counts as: killed

PACKAGE = "@anthropic-ai/claude-code"
TTL = 6 * 3600.0
VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")


def _cache() -> Path:
    return bottle_home() / "cache" / "claude-code-versions.json"


def resolve_version(requested: str, *, timeout: float = 3.0) -> str:
    """A concrete version for `requested` ("latest", "stable" or "X.Y.Z"). Offline, or when the registry
    does not answer, the last resolved value is used; with none, the tag itself (the image builds anyway)."""
    if VERSION_RE.match(requested):
        return requested
    cache = _cache()
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    entry = data.get(requested) or {}
    if entry.get("version") and time.time() - float(entry.get("at", 0)) < TTL:
        return str(entry["version"])
    if os.environ.get("CLAUDE_BOTTLE_OFFLINE"):
        return str(entry.get("version") or requested)
    # npm reads its registry from npm_config_registry (lower case, its own convention).
    registry = (os.environ.get("npm_config_registry") or "https://registry.npmjs.org").rstrip("/")  # noqa: SIM112
    url = f"{registry}/{PACKAGE}/{requested}"
    import urllib.request  # only here: it costs ~12 ms to import, and most commands never ask npm

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - https registry URL
            version = str(json.load(resp)["version"])
    except (OSError, ValueError, KeyError):
        return str(entry.get("version") or requested)
    if not VERSION_RE.match(version):
        return str(entry.get("version") or requested)
    data[requested] = {"version": version, "at": time.time()}
    cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(cache, json.dumps(data, indent=2) + "\n")
    return version


def seed_config(config_dir: Path, *, placeholder_key: str | None) -> None:
    """First-run answers for Claude Code (CLAUDE_CONFIG_DIR/.claude.json), so a new bottle starts straight
    into work: onboarding done, the bottle's workspace trusted, skip-permissions acknowledged, the
    placeholder key approved, no auto-updates. Claude Code's own file is never overwritten."""
    path = config_dir / ".claude.json"
    if path.exists():
        return
    config = {
        "hasCompletedOnboarding": True,
        "theme": "dark",
        "autoUpdates": False,
        "bypassPermissionsModeAccepted": True,
        "projects": {
            "/workspace": {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True, "allowedTools": []}
        },
    }
    if placeholder_key:
        config["customApiKeyResponses"] = {"approved": [placeholder_key[-20:]], "rejected": []}
    write_private(path, json.dumps(config, indent=2) + "\n")


CAPABILITY_PROMPT = (
    "You run in a sealed bottle: only the hosts the operator allowed are reachable, and only the packages "
    "in its image are installed. If you need something else, ask for it with "
    "`bottle-capability request KIND:NAME --reason WHY` (KIND: apt, pip, npm, or egress for host[:port]). "
    "An egress request waits for the operator's answer. A package request stops this session; it resumes "
    "with the package installed (or refused), so ask for every package you need at once and save your work "
    "first. Do not try to get around the bottle."
)


def claude_argv(
    agent: AgentSpec,
    *,
    prompt: str | None,
    session_id: str | None = None,
    resume: bool = False,
    headless: bool = True,
) -> list[str]:
    """The claude command line for an agent. The bottle is the boundary, so permissions are skipped
    inside it unless the agent asks for another permission_mode."""
    argv = ["claude"]
    if agent.permission_mode == "bypassPermissions":
        argv.append("--dangerously-skip-permissions")
    else:
        argv += ["--permission-mode", agent.permission_mode]
    if agent.model:
        argv += ["--model", agent.model]
    system = CAPABILITY_PROMPT + (f"\n\n{agent.append_system_prompt}" if agent.append_system_prompt else "")
    argv += ["--append-system-prompt", system]
    argv += list(agent.claude_args)
    if session_id:
        argv += ["--resume", session_id] if resume else ["--session-id", session_id]
    if prompt:
        argv += ["-p", prompt] if headless else [prompt]  # interactive: the session's first message
    return argv


def attach_argv() -> list[str]:
    return ["tmux", "-u", "attach-session", "-t", SESSION]  # -u: UTF-8 whatever the locale says


_TERM_RE = re.compile(r"[A-Za-z0-9._+-]{1,64}")


def terminal_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What the attaching tmux client must know of the operator's terminal to draw Claude Code as it looks
    outside a bottle: its type (else docker exec says "xterm": 8 colours) and true-colour support."""
    env = os.environ if environ is None else environ
    term = env.get("TERM", "")
    out = {"TERM": term if _TERM_RE.fullmatch(term) and term != "dumb" else "xterm-256color"}
    if env.get("COLORTERM") in ("truecolor", "24bit"):
        out["COLORTERM"] = env["COLORTERM"]
    return out


def parse_exit_code(text: str) -> int | None:
    """The exit code bottle-run left, strictly: ASCII digits only (the agent can write this file, and
    int() also takes "²", "+1" or "1_0")."""
    t = text.strip()
    return int(t) if re.fullmatch(r"[0-9]{1,3}", t) and int(t) < 256 else None


def run_end(state: StateDir) -> int | None:
    """The exit code the bottle's last claude run left in claude-home (None: still running, or never ran).
    Read on the host, without following links (the agent can write claude-home)."""
    try:
        fd = os.open(state.claude_home / HOST_EXIT_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return parse_exit_code(f.read(16).decode("ascii", "replace"))


def notice_crash(state: StateDir, record: BottleRecord, engine: str | None) -> BottleRecord:
    """A running bottle whose attached CLI died (SIGKILL, lost session), whose agent container exited, or
    whose detached claude run ended non-zero is a crash nobody recorded: record it now, with the preserve
    marker (SPEC S2). `engine` is the agent's status from its backend (None: unknown). Nothing is copied
    here (`ls` and `cleanup` call this and must stay fast): the transcript snapshot is owed to the next
    stop or resume."""
    if record.status != "running":
        return record
    why = None
    if record.attached_pid and not pid_alive(record.attached_pid, record.attached_started):
        why = f"claude-bottle (pid {record.attached_pid}) died while attached"
    elif engine is not None and engine.startswith(("exited", "dead")):
        why = f"agent container {engine}"
    elif not record.attached_pid and (rc := run_end(state)) not in (None, *NORMAL_ENDS):
        why = f"claude exited with {rc} (a detached run)"
    if why is None or state.busy():
        return record
    from claude_bottle.bottle.capabilities import pending

    wants = [r.label for r in pending(state) if r.package]
    if wants:  # it stopped itself to ask for packages: blocked, not crashed
        state.preserve_block(wants, snapshot=False)
    else:
        state.preserve_crash(why, snapshot=False)
    return state.read()
