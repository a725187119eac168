"""Git-aware egress (issue 15, item 3): a smart-HTTP push (`POST .../git-receive-pack`) on a credential
route is judged from its ref-update commands, the pkt-lines before the pack, before a byte is forwarded.

By default a bottle may update `refs/heads/claude-bottle/<slug>` only. The policy's `git_refs` patterns
(fnmatch, from the manifest's `credentials.github.push_refs`) widen it; a tag or a deletion passes only
when a pattern names it (`delete:` before a pattern allows deleting what it matches); `git_repos`, when
set, limits the repositories (`owner/name`). A push certificate or anything unparsed is refused: what is
not understood is not forwarded.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_COMMANDS_BYTES",
    "RefUpdate",
    "capabilities",
    "commands_end",
    "judge_push",
    "parse_commands",
    "refusal_report",
    "repo_of",
]

MAX_COMMANDS_BYTES = 64 * 1024
_ZERO = re.compile(r"0{40}(?:0{24})?")
_OID = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_REPO = re.compile(r"^/?(?P<repo>[A-Za-z0-9._-]+/[A-Za-z0-9._-]+?)(?:\.git)?/git-receive-pack$")


class BadPush(ValueError):
    """The command section cannot be judged."""


@dataclass(frozen=True)
class RefUpdate:
    old: str
    new: str
    ref: str

    @property
    def deletes(self) -> bool:
        return bool(_ZERO.fullmatch(self.new))


def repo_of(path: str) -> str | None:
    """`owner/name` of a receive-pack path, or None when it is not one."""
    m = _REPO.match(path.split("?", 1)[0])
    return m.group("repo") if m else None


def commands_end(data: bytes) -> int | None:
    """Where the command section (pkt-lines up to the flush-pkt) ends in `data`, or None: read more."""
    i = 0
    while True:
        if len(data) < i + 4:
            return None
        try:
            n = int(data[i : i + 4], 16)
        except ValueError:
            raise BadPush("not a pkt-line") from None
        if n == 0:
            return i + 4
        if n < 4:
            raise BadPush("bad pkt-line length")
        if len(data) < i + n:
            return None
        i += n


def parse_commands(section: bytes) -> list[RefUpdate]:
    out = []
    i = 0
    while True:
        n = int(section[i : i + 4], 16)
        if n == 0:
            break
        line = section[i + 4 : i + n].split(b"\0", 1)[0].rstrip(b"\n").decode("utf-8", "replace")
        i += n
        if line.startswith("push-cert"):
            raise BadPush("push certificates are not accepted")
        parts = line.split(" ")
        if len(parts) != 3 or not _OID.fullmatch(parts[0]) or not _OID.fullmatch(parts[1]):
            raise BadPush("not a ref-update command")
        out.append(RefUpdate(*parts))
    if not out:
        raise BadPush("no ref updates")
    return out


def judge_push(
    updates: Sequence[RefUpdate], *, slug: str, patterns: Sequence[str], repo: str | None, repos: Sequence[str]
) -> list[tuple[RefUpdate, bool, str]]:
    """(update, allowed, reason) for each ref update."""
    own = f"refs/heads/claude-bottle/{slug}"
    out = []
    for u in updates:
        if repos and (repo is None or repo not in repos):
            out.append((u, False, f"repository {repo or '?'} is not in the bottle's list"))
            continue
        if u.deletes:
            ok = any(p.startswith("delete:") and fnmatch.fnmatchcase(u.ref, p[7:]) for p in patterns)
            out.append((u, ok, "deletion listed" if ok else f"deleting {u.ref} is not allowed"))
            continue
        if u.ref == own:
            out.append((u, True, "the bottle's own branch"))
            continue
        listed = [p for p in patterns if not p.startswith("delete:") and fnmatch.fnmatchcase(u.ref, p)]
        if listed:
            out.append((u, True, f"listed: {listed[0]}"))
        elif u.ref.startswith("refs/tags/"):
            out.append((u, False, f"tag {u.ref} is not allowed (only {own} unless listed)"))
        else:
            out.append((u, False, f"only {own} may be pushed, not {u.ref}"))
    return out


def capabilities(section: bytes) -> set[str]:
    """The capabilities the client sent after the first command (report-status, side-band-64k, ...)."""
    n = int(section[:4], 16) if len(section) >= 4 and section[:4] != b"0000" else 0
    _cmd, sep, caps = section[4:n].partition(b"\0")
    return set(caps.decode("ascii", "replace").split()) if sep else set()


def _pkt(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 4) + data


def refusal_report(verdicts: Sequence[tuple[RefUpdate, bool, str]], caps: set[str]) -> bytes | None:
    """A refused push answered in git's own protocol (a receive-pack status report), so that the agent's
    git says which ref was rejected and why, as a server with protected branches does; None when the
    client asked for no report (it then gets a plain 403)."""
    if not caps & {"report-status", "report-status-v2"}:  # v2's "ng" lines are v1's
        return None
    first = next(why for _u, ok, why in verdicts if not ok)
    lines = [b"unpack ok\n"] + [
        f"ng {u.ref} {why if not ok else 'not pushed: another ref in this push was refused'}\n".encode()
        for u, ok, why in verdicts
    ]
    status = b"".join(_pkt(line) for line in lines) + b"0000"
    band = 65515 if "side-band-64k" in caps else 995 if "side-band" in caps else 0
    if not band:
        return status
    note = _pkt(b"\x02" + f"claude-bottle guard: push refused: {first}\n".encode())
    return note + b"".join(_pkt(b"\x01" + status[i : i + band]) for i in range(0, len(status), band)) + b"0000"
