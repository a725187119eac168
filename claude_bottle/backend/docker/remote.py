"""A Docker bottle on an engine that does not see this machine's files (a build server, a remote context).

Nothing is bound from here: each place the containers need is a named volume of the bottle's
(`<project>-<part>`), filled through the engine API by a throwaway helper container reading a tar stream on
its standard input, and read back the same way. What travels in at every start: the guard's files, its
log so far (the audit chain goes on), the agent's `~/.claude`, the workspace, and each read-only mount.
What comes home at stop (and on `pull`, `logs --egress`, `report`): the audit log and the requests, the
transcripts, and the workspace: into the worktree checkout in worktree mode, else `<state>/workspace`
(never into the operator's own tree: the operator looks, then copies). A live grant rewrites the guard's
files in their volume, atomically.

What comes home was written by the agent: it is unpacked into a fresh directory of the state dir, every
member checked against where it lands (no absolute names, no `..`, nothing through a link, no device or
pipe, no owner or set-id bits), then renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ...runtime import RuntimeIds
from ...state import write_private
from ...walk import remove_tree
from . import engine
from .compose import volume_name

if TYPE_CHECKING:
    from ...state import StateDir

__all__ = [
    "ENGINE_FILE",
    "HELPER_LABEL",
    "Volume",
    "bring_home",
    "fill",
    "home_workspace",
    "push_guard_files",
    "remove_volumes",
    "unpack",
    "volume_name",
    "volumes_of",
]

HELPER_LABEL = "claude-bottle.helper"  # a helper container: not one of the bottle's own
ENGINE_FILE = "engine.json"  # the bottle's engine (engine.Context), written at start
INCOMING = ".incoming"
SKIPPED_FILE = "home-skipped.txt"  # what the last trip home refused, one member per line

# The helper's privileges: it unpacks as root and sets owners, nothing more; no network.
_HELPER = [
    "--rm",
    "-i",
    "--network",
    "none",
    "--cap-drop",
    "ALL",
    "--cap-add",
    "CHOWN",
    "--cap-add",
    "DAC_OVERRIDE",
    "--cap-add",
    "FOWNER",
    "--security-opt",
    "no-new-privileges:true",
    "--user",
    "0:0",
]

# Rewrites each regular file of the tar on stdin in place, atomically (a temp file, then rename): the guard
# re-reads its policy when it changes and must never see half of one.
_REPLACE = """
import os, sys, tarfile
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as t:
    for m in t:
        if not m.isfile() or "/" in m.name or m.name.startswith("."):
            continue
        data = t.extractfile(m).read()
        path = "/v/" + m.name
        fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchown(f.fileno(), m.uid, m.gid)
        os.replace(path + ".new", path)
"""


@dataclass(frozen=True)
class Volume:
    """One volume of a remote bottle: what fills it (a local file or folder, owned in the volume by
    uid:gid), and the folder's own mode there."""

    part: str
    source: Path | None
    uid: int
    gid: int
    mode: int

    def name(self, slug: str) -> str:
        return volume_name(slug, self.part)


def volumes_of(
    *,
    guard_dir: Path,
    claude_home: Path,
    workspace: Path,
    mounts: Sequence[tuple[Path, str, bool]],
    ids: RuntimeIds,
) -> list[Volume]:
    """The bottle's volumes, in the order they are filled (the guard's log folder is filled from files)."""
    g, a = (ids.guard_uid, ids.guard_gid), (ids.agent_uid, ids.agent_gid)
    out = [
        Volume("guard", guard_dir, *g, 0o700),
        Volume("log", None, *g, 0o700),
        Volume("run", None, 0, 0, 0o777),  # root in the net container has no DAC override
        Volume("home", claude_home, *a, 0o700),
        Volume("workspace", workspace, *a, 0o755),
    ]
    out += [Volume(f"mount{i}", src, *a, 0o755) for i, (src, _guest, _ro) in enumerate(mounts)]
    return out


def _owned(uid: int, gid: int) -> Callable[[tarfile.TarInfo], tarfile.TarInfo | None]:
    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
            return None  # a socket, a pipe or a device of this machine never travels
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        info.mode &= 0o777  # no set-id bits
        return info

    return owned


def _add_folder(tar: tarfile.TarFile, vol: Volume) -> None:
    root = tarfile.TarInfo(vol.part)
    root.type, root.mode, root.uid, root.gid = tarfile.DIRTYPE, vol.mode, vol.uid, vol.gid
    tar.addfile(root)
    if vol.source is None:
        return
    for entry in sorted(vol.source.iterdir()) if vol.source.is_dir() else []:
        tar.add(entry, arcname=f"{vol.part}/{entry.name}", recursive=True, filter=_owned(vol.uid, vol.gid))


def _add_file(tar: tarfile.TarFile, path: Path, arcname: str, uid: int, gid: int) -> None:
    info = tarfile.TarInfo(arcname)
    data = path.read_bytes() if path.is_file() else b""
    info.size, info.mode, info.uid, info.gid = len(data), 0o600, uid, gid
    tar.addfile(info, io.BytesIO(data))


def _helper(slug: str, image: str, labels: dict[str, str], mounts: Sequence[str], argv: Sequence[str]) -> list[str]:
    """`docker run` of a throwaway helper of this bottle (named and labelled as its, so a cleanup after a
    crash finds one left behind)."""
    label_args = [x for k, v in {**labels, HELPER_LABEL: "1"}.items() for x in ("--label", f"{k}={v}")]
    vols = [x for m in mounts for x in ("-v", m)]
    name = f"{volume_name(slug, 'helper')}-{secrets.token_hex(3)}"
    return ["run", "--name", name, *_HELPER, *label_args, *vols, "--entrypoint", argv[0], image, *argv[1:]]


def fill(
    *,
    slug: str,
    image: str,
    labels: dict[str, str],
    volumes: Sequence[Volume],
    log_files: Sequence[Path],
) -> None:
    """Create the bottle's volumes afresh and fill them, in one helper run: one tar stream of everything."""
    label_args = [x for k, v in labels.items() for x in ("--label", f"{k}={v}")]
    for vol in volumes:
        name = vol.name(slug)
        engine.docker("volume", "rm", "-f", name, timeout=120)  # a stale one (a crash) is never trusted
        engine.check(engine.docker("volume", "create", *label_args, name), f"creating volume {name}")
    log = next(v for v in volumes if v.part == "log")

    def write(stream: IO[bytes]) -> None:
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for vol in volumes:
                _add_folder(tar, vol)
                if vol is log:
                    for f in log_files:
                        _add_file(tar, f, f"log/{f.name}", vol.uid, vol.gid)

    argv = _helper(
        slug,
        image,
        labels,
        [f"{v.name(slug)}:/v/{v.part}" for v in volumes],
        ["tar", "-x", "--numeric-owner", "--same-owner", "--same-permissions", "-C", "/v", "-f", "-"],
    )
    engine.check(engine.pipe_in(argv, write), f"copying {slug}'s files to its engine")


def push_guard_files(*, slug: str, image: str, labels: dict[str, str], guard_dir: Path, ids: RuntimeIds) -> None:
    """The guard's files (not its secrets: those do not change while it runs) rewritten in their volume."""
    files = [p for p in sorted(guard_dir.iterdir()) if p.is_file() and p.name != "secrets.json"]

    def write(stream: IO[bytes]) -> None:
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for p in files:
                _add_file(tar, p, p.name, ids.guard_uid, ids.guard_gid)

    argv = _helper(slug, image, labels, [f"{volume_name(slug, 'guard')}:/v"], ["python3", "-c", _REPLACE])
    engine.check(engine.pipe_in(argv, write, timeout=120), f"updating {slug}'s guard files")


def _checked(skipped: list[str]) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    """tarfile's `data` filter (nothing outside dest, through a link, special, or with owner and set-id
    bits), except that a link pointing elsewhere is kept as a link: a repository may hold one, and it is
    never followed (every later member is checked against what is on disk by then)."""

    def check(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        try:
            return tarfile.data_filter(member, path)
        except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
            if member.issym():
                none: None = None  # tarfile's own "leave it": typeshed wants int and str
                return member.replace(uid=none, gid=none, uname=none, gname=none, deep=False)  # type: ignore[arg-type]
            skipped.append(member.name)
            return None
        except tarfile.FilterError:
            skipped.append(member.name)
            return None

    return check


def unpack(stream: IO[bytes], dest: Path) -> list[str]:
    """Unpack an agent-written tar stream into `dest` (made here, empty); returns the members refused."""
    dest.mkdir(mode=0o700)
    skipped: list[str] = []
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        tar.extractall(dest, filter=_checked(skipped))  # noqa: S202 - every member judged by _checked
    return skipped


@contextlib.contextmanager
def _incoming(state: StateDir) -> Iterator[Path]:
    tmp = state.path / INCOMING
    remove_tree(tmp)
    try:
        yield tmp
    finally:
        remove_tree(tmp)


def _swap(new: Path, target: Path) -> None:
    """`new` in place of `target` (whatever was there removed without following a link)."""
    if not new.is_dir() or new.is_symlink():
        return
    remove_tree(target)
    new.rename(target)


def home_workspace(state: StateDir) -> Path:
    """Where a remote bottle's workspace lands in mount mode."""
    return state.path / "workspace"


def bring_home(
    *,
    state: StateDir,
    image: str,
    labels: dict[str, str],
    workspace_home: Path | None,
) -> list[str]:
    """The audit log, the requests, the transcripts and (to `workspace_home`) the workspace, from the
    bottle's volumes into the state dir; returns what was refused on the way. Volumes that are gone
    (already brought home and removed) leave what is here as it is."""
    slug = state.slug
    parts = ["log", "home", *(["workspace"] if workspace_home is not None else [])]
    names = {p: volume_name(slug, p) for p in parts}
    present = engine.docker("volume", "inspect", "--format", "{{.Name}}", *names.values())
    have = set(present.stdout.split())
    parts = [p for p in parts if names[p] in have]
    if not parts:
        return []
    skipped: list[str] = []
    with _incoming(state) as tmp:
        argv = _helper(
            slug,
            image,
            labels,
            [f"{names[p]}:/v/{p}:ro" for p in parts],
            ["tar", "-c", "--numeric-owner", "-C", "/v", *parts],
        )

        def read(stream: IO[bytes]) -> None:
            skipped.extend(unpack(stream, tmp))

        engine.check(engine.pipe_out(argv, read), f"bringing {slug}'s files home from its engine")
        log = tmp / "log"
        for name, target in (("egress.jsonl", state.audit_path), ("requests.jsonl", state.path / "requests.jsonl")):
            got = log / name
            if got.is_file() and not got.is_symlink():
                write_private(target, got.read_bytes())
        _swap(tmp / "home", state.claude_home)
        if workspace_home is not None:
            _swap(tmp / "workspace", workspace_home)
    if skipped:
        write_private(state.path / SKIPPED_FILE, "".join(f"{s}\n" for s in skipped))
    return skipped


def remove_volumes(slug: str, parts: Sequence[str]) -> None:
    names = [volume_name(slug, p) for p in parts]
    result = engine.docker("volume", "rm", "-f", *names, timeout=300)
    engine.check(result, f"removing {slug}'s volumes")
