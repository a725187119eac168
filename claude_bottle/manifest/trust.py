"""Manifest trust: a manifest is used only once the operator has trusted its exact content (SPEC M8).

A manifest says what a bottle may reach and mount and where the guard sends the real credentials, and
manifests are found by walking up from the current directory, through places an agent can write. So
(like direnv's `allow`) each manifest file is trusted by the SHA-256 of its bytes, and again after every
change: the operator sees what it grants, and what changed since last time, and answers once; scripts
and CI trust ahead of time with `claude-bottle trust PATH`. With nobody to ask, an untrusted manifest is
refused with the command to run. The bytes that are hashed are the bytes that are parsed.

A manifest lying inside a directory a bottle mounts read-write is never used silently: even when its
content is trusted, each use says so.

Whatever trusts writes the store under `trust_lock`, so a check and the trust that follows it are never
interleaved with another command's (`grant --save` edits only bytes it found trusted, under that lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from claude_bottle.bottle.state import all_state_roots, write_private
from claude_bottle.errors import BottleError, ManifestError
from claude_bottle.hostfs.paths import writable_roots
from claude_bottle.manifest import Manifest, parse_manifest

__all__ = ["TrustStore", "grants", "load_trusted", "read_manifest", "trust_bytes", "trust_lock", "untrusted"]

TRUST_FILE = "trust.json"
LOCK_FILE = "trust.lock"
LOCK_WAIT = 10.0  # seconds: each holder keeps it for one read, check and write, never across a prompt


def read_manifest(path: Path) -> tuple[bytes, Manifest]:
    """The manifest's bytes and what they parse to (the same bytes)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file: check --manifest or run `claude-bottle init`") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read it: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not UTF-8 text") from None
    return raw, parse_manifest(text, path=path.resolve())


def grants(m: Manifest) -> list[str]:
    """What a manifest grants, one line each, stable (so two versions can be compared line by line)."""
    base = m.directory
    lines = []
    for name, b in sorted(m.bottles.items()):
        where = f"bottle {name}"
        lines.append(
            f"{where}: backend {b.backend or 'default'}, base image {b.base_image}, egress engine {b.egress.engine}"
        )
        lines += [
            f"{where}: egress allow {r.label()}{' (private addresses)' if r.private else ''}" for r in b.egress.allow
        ]
        lines += [f"{where}: egress deny {r.label()}" for r in b.egress.deny]
        lines += [f"{where}: joins Docker network {n}" for n in b.egress.networks]
        for mnt in b.mounts:
            lines.append(f"{where}: mounts {(base / Path(mnt.host).expanduser())} at {mnt.guest} ({mnt.mode})")
        for cname in ("anthropic", "github"):
            c = getattr(b.credentials, cname)
            if c is not None:
                lines.append(
                    f"{where}: credential {cname} from {c.source or 'the default environment variable'}, "
                    f"sent to {c.upstream or 'the default upstream'}"
                )
        if b.ca_certs:
            lines.append(f"{where}: trusts CA bundle {base / Path(b.ca_certs).expanduser()}")
        if b.packages or b.pip or b.npm:
            lines.append(f"{where}: installs apt {list(b.packages)}, pip {list(b.pip)}, npm {list(b.npm)}")
    for name, a in sorted(m.agents.items()):
        lines.append(f"agent {name}: bottle {a.bottle}, workspace {m.workspace(name)}, permissions {a.permission_mode}")
        if a.workspace_mode == "mount":
            lines.append(
                f'agent {name}: WRITES YOUR FILES DIRECTLY (workspace_mode = "mount"): while it runs, git, an editor '
                "or a git-aware shell prompt in that workspace may run code it wrote"
            )
    return lines


@dataclass
class TrustStore:
    path: Path

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {"version": 1, "manifests": {}}
        return (
            data
            if isinstance(data, dict) and isinstance(data.get("manifests"), dict)
            else {"version": 1, "manifests": {}}
        )

    def entry(self, manifest: Path) -> dict[str, Any] | None:
        e = self._load()["manifests"].get(str(manifest))
        return e if isinstance(e, dict) else None

    def trust(self, manifest: Path, digest: str, lines: list[str]) -> None:
        """Record a digest as trusted (a read, change and write of the store: hold `trust_lock`)."""
        data = self._load()
        data["manifests"][str(manifest)] = {
            "sha256": digest,
            "trusted": datetime.now(UTC).isoformat(timespec="seconds"),
            "grants": lines,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.path, json.dumps(data, indent=2) + "\n")


def digest_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


@contextlib.contextmanager
def trust_lock(home: Path) -> Iterator[None]:
    """Held while a manifest is checked against the store and trusted: one command at a time."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BottleError(
                        f"{home / LOCK_FILE} is held by another claude-bottle command: let it finish, then retry"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _why_not(entry: dict[str, Any] | None, digest: str) -> str | None:
    if entry is None:
        return "new"
    return None if entry.get("sha256") == digest else "changed since it was trusted"


def untrusted(path: Path, raw: bytes, *, home: Path) -> str | None:
    """None if these exact bytes are what the operator trusted for the manifest at path, else why not."""
    return _why_not(TrustStore(home / TRUST_FILE).entry(path.resolve()), digest_of(raw))


def trust_bytes(path: Path, raw: bytes, *, home: Path) -> list[str]:
    """Trust exactly these bytes (parsed here, so what is trusted is what they grant) as the manifest at
    path; hold `trust_lock`. Its grants are returned."""
    resolved = path.resolve()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{resolved}: not UTF-8 text") from None
    lines = grants(parse_manifest(text, path=resolved))
    TrustStore(home / TRUST_FILE).trust(resolved, digest_of(raw), lines)
    return lines


def describe(path: Path, lines: list[str], old: dict[str, Any] | None, writable_by: str | None) -> list[str]:
    """What the operator is shown before trusting: the grants, marked + (new) and - (gone) against the
    version trusted before."""
    head = (
        f"{path} is new to claude-bottle"
        if old is None
        else f"{path} changed since you trusted it ({old.get('trusted')})"
    )
    out = [head + "; it grants:"]
    before = set(old.get("grants", [])) if old else set()
    for ln in lines:
        out.append(f"  {'+' if old is not None and ln not in before else ' '} {ln}")
    for ln in old.get("grants", []) if old else []:
        if ln not in lines:
            out.append(f"  - {ln}")
    if writable_by:
        out.append(f"  note: this file lies in {writable_by}'s writable files: an agent could have written it")
    return out


def load_trusted(
    path: Path,
    *,
    home: Path,
    ask: Callable[[list[str]], bool] | None,
    say: Callable[[str], None],
) -> Manifest:
    """The manifest at path, if its content is trusted (or the operator trusts it now). `ask` shows the
    lines and returns the answer; None when nobody can answer (then an untrusted manifest is refused)."""
    raw, manifest = read_manifest(path)
    resolved = path.resolve()
    store = TrustStore(home / TRUST_FILE)
    digest = digest_of(raw)
    entry = store.entry(resolved)
    writable_by = writable_roots(all_state_roots(home)).holding(resolved)
    if entry is not None and entry.get("sha256") == digest:
        if writable_by:
            when = entry.get("trusted")
            say(f"note: {resolved} lies in {writable_by}'s writable files; using it as trusted on {when}")
        return manifest
    lines = grants(manifest)
    why = _why_not(entry, digest)
    if ask is None:
        raise BottleError(f"{resolved} is not trusted ({why}): review it, then run `claude-bottle trust {resolved}`")
    if not ask(describe(resolved, lines, entry, writable_by)):
        raise BottleError(f"{resolved} was not trusted: nothing started")
    with trust_lock(home):
        store.trust(resolved, digest, lines)  # the bytes shown and parsed above, whatever the file holds now
    return manifest


def trust_file(path: Path, *, home: Path) -> tuple[Path, list[str]]:
    """Trust a manifest's current content ahead of time (the `trust` verb, `init`)."""
    with trust_lock(home):
        raw, _ = read_manifest(path)
        return path.resolve(), trust_bytes(path, raw, home=home)
