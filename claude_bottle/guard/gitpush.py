"""Git-aware egress (issue 15, item 3): a smart-HTTP push (`POST .../git-receive-pack`) on a credential
route is judged from its ref-update commands, the pkt-lines before the pack, before a byte is forwarded.

By default a bottle may update `refs/heads/claude-bottle/<slug>` only. The policy's `git_refs` patterns
(fnmatch, from the manifest's `credentials.github.push_refs`) widen it; a tag or a deletion passes only
when a pattern names it (`delete:` before a pattern allows deleting what it matches); `git_repos`, when
set, limits the repositories (`owner/name`). A push certificate or anything unparsed is refused: what is
not understood is not forwarded.

What is a push is decided by `push_target`, for the credential route and the plain-HTTP path alike: git's
content type, or a path whose last segment, read as the most lenient server would (`normalise_path`), is
git-receive-pack. A push must come in git's own spelling, `/REPO/git-receive-pack` as sent, so that what
is forwarded is what was judged; a path servers read in different ways is refused when any reading of it
could be a push.
"""

from __future__ import annotations

import fnmatch
import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = [
    "MAX_COMMANDS_BYTES",
    "PUSH_TYPE",
    "PushTarget",
    "RefUpdate",
    "ambiguity",
    "capabilities",
    "commands_end",
    "judge_push",
    "normalise_path",
    "parse_commands",
    "push_target",
    "refusal_report",
    "repo_of",
]

MAX_COMMANDS_BYTES = 64 * 1024
_ZERO = re.compile(r"0{40}(?:0{24})?")
_OID = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_REPO = re.compile(r"^/?(?P<repo>[A-Za-z0-9._-]+/[A-Za-z0-9._-]+?)(?:\.git)?/git-receive-pack$")
_PUSH_PATH = re.compile(r"(?:/[A-Za-z0-9._-]+)+/git-receive-pack")  # any depth: plain-HTTP servers vary
PUSH_TYPE = "application/x-git-receive-pack-request"
_SERVICE = "git-receive-pack"
_ESCAPE = re.compile(r"%(?P<hex>[0-9A-Fa-f]{2})?")
_PLAIN = frozenset(string.ascii_letters + string.digits + "-_~")  # what every server decodes alike
_NAMED = {
    0x2F: "an encoded slash",
    0x5C: "an encoded backslash",
    0x00: "an encoded NUL",
    0x25: "a double percent-encoding",
    0x2E: "an encoded dot",
}
_DECODINGS = 8  # a server decoding more often than this is not one we guess for: refused instead


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


@dataclass(frozen=True)
class PushTarget:
    """A request that is a push: its repository (`owner/name`, when the path names one) or why it is refused
    before its commands are read."""

    repo: str | None
    refusal: str | None = None


def normalise_path(target: str) -> str:
    """The path of an origin-form target as the most lenient server reads it: query and fragment cut,
    percent-escapes decoded once, a backslash taken for a slash, a NUL for the end, `;params` dropped from
    each segment, empty and `.` segments dropped, `..` resolved (never above the root), no trailing slash."""
    path = re.split(r"[?#]", target, maxsplit=1)[0]
    text = unquote(path, encoding="latin-1").replace("\\", "/").split("\0", 1)[0]
    segments: list[str] = []
    for raw in text.split("/"):
        seg = raw.split(";", 1)[0]
        if seg == "..":
            if segments:
                segments.pop()
        elif seg not in ("", "."):
            segments.append(seg)
    return "/" + "/".join(segments)


def ambiguity(path: str) -> str | None:
    """What in a path (the part before `?`) servers read in different ways, or None: a backslash, a `#`, a
    `;`, a dot segment, a stray `%`, or an escape of anything but a letter, digit, `-`, `_` or `~`."""
    if "\\" in path:
        return "a backslash"
    if "#" in path:
        return "a fragment"  # not allowed in a request target: stripped by some, kept by others
    if ";" in path:
        return "a ;parameter"  # dropped per segment, for the whole rest, or not at all
    for m in _ESCAPE.finditer(path):
        if m["hex"] is None:
            return "a stray percent sign"
        byte = int(m["hex"], 16)
        if chr(byte) not in _PLAIN:
            return _NAMED.get(byte, "an escaped delimiter, control or non-ASCII byte")
    if any(seg in (".", "..") for seg in path.split("/")):
        return "a dot segment"  # resolved before or after decoding, with or without empty segments
    return None


def _mentions_service(path: str) -> bool:
    """Whether any reading of `path` could name git-receive-pack: decoded until it no longer changes,
    case-folded, also as UTF-8 (NFKC, so a KELVIN SIGN is a k), NULs dropped. Every reading's segments
    are pieces of this text, so a path that does not mention the service is no push by any reading."""
    text = path
    for _ in range(_DECODINGS):
        decoded = unquote(text, encoding="latin-1")
        if decoded == text:
            break
        text = decoded
    else:
        return True
    wide = unicodedata.normalize("NFKC", text.encode("latin-1").decode("utf-8", "ignore")).casefold()
    return any(_SERVICE in reading.replace("\0", "") for reading in (text.lower(), wide))


def push_target(target: str, content_types: Sequence[str] = ()) -> PushTarget | None:
    """Whether an origin-form target (and its Content-Type values) is a push, and how it is judged; None when
    it is not one. A push is git's content type or a normalised path ending in git-receive-pack (any case).
    It must be sent as git sends it, `/REPO/git-receive-pack` exactly: a respelled one is refused, not
    rewritten, so the forwarded target is the judged one."""
    path = target.split("?", 1)[0]
    typed = any(PUSH_TYPE in value.lower() for value in content_types)
    unclear = ambiguity(path)
    if unclear is not None:
        if typed or _mentions_service(path):
            return PushTarget(None, f"ambiguous push path ({unclear}): servers read it differently")
        return None
    norm = normalise_path(target)
    named = norm.rsplit("/", 1)[-1].lower() == _SERVICE
    if not (typed or named):
        return None
    if not named:
        return PushTarget(None, "a receive-pack request to a path that is not /REPO/git-receive-pack")
    if norm != target or not norm.endswith("/" + _SERVICE):
        return PushTarget(None, "push path respelled: git sends /REPO/git-receive-pack as is")
    if not _PUSH_PATH.fullmatch(norm):
        return PushTarget(None, "cannot read the repository from the push path")
    return PushTarget(repo_of(norm))


def repo_of(path: str) -> str | None:
    """`owner/name` of a receive-pack path (normalised), or None when it is not one or reads two ways."""
    if ambiguity(path.split("?", 1)[0]) is not None:
        return None
    m = _REPO.match(normalise_path(path))
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
