"""A Docker bottle on an engine that does not see this machine's files (a build server, a remote context).

Nothing is bound from here: each place the containers need is a named volume of the bottle's
(`<project>-<part>`), filled through the engine API by a throwaway helper container reading a tar stream on
its standard input, and read back the same way. What travels in at every start: the guard's files, its
log so far (the audit chain goes on), the agent's `~/.claude`, the workspace, and each read-only mount.
What comes home at stop (and on `pull`, `logs --egress`, `verify`, `report`): the audit log and requests, the
transcripts, and the workspace: into the worktree checkout in worktree mode, else `<state>/workspace`
(never into the operator's own tree: the operator looks, then copies). A live grant rewrites the guard's
files in their volume, atomically.

What comes home was written by the agent: it is unpacked as it streams into a fresh directory of the
state dir by directory descriptor, within budgets (unpack.py: nothing through a link, no absolute names or
`..`, no hard link, device or pipe, no owner or set-id bits; links kept as links; bytes, members, depth),
then renamed into place (homecoming.py, shared with the Kubernetes backend). The audit log comes on its
own, first, from a volume only the guard writes; the operator's own lines are kept (`merge_log`).
"""

from __future__ import annotations

import io
import secrets
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from claude_bottle import engine
from claude_bottle.backend.docker.compose import volume_name
from claude_bottle.backend.homecoming import Homecoming, merge_log, put_in_place
from claude_bottle.errors import BackendError
from claude_bottle.git.settle import settle_copy
from claude_bottle.identity import RuntimeIds

if TYPE_CHECKING:
    from claude_bottle.bottle.state import StateDir

__all__ = [
    "DATA_PARTS",
    "ENGINE_FILE",
    "HELPER_LABEL",
    "Volume",
    "bring_home",
    "fill_volumes",
    "merge_log",
    "push_guard_files",
    "remove_volumes",
    "volume_name",
    "volumes_of",
]

HELPER_LABEL = "claude-bottle.helper"  # a helper container: not one of the bottle's own
ENGINE_FILE = "engine.json"  # the bottle's engine (engine.Context), written at start

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
    # Files the volume gets that its source lacks (relative path -> content): a checkout's `.git/HEAD`, which
    # never comes home (gitshape: it would make the home copy a repository to git on this machine).
    extra: tuple[tuple[str, bytes], ...] = ()

    def name(self, slug: str) -> str:
        return volume_name(slug, self.part)


def volumes_of(
    *,
    guard_dir: Path,
    claude_home: Path,
    workspace: Path,
    mounts: Sequence[tuple[Path, str, bool]],
    ids: RuntimeIds,
    workspace_extra: tuple[tuple[str, bytes], ...] = (),
) -> list[Volume]:
    """The bottle's volumes, in the order they are filled (the guard's log folder is filled from files)."""
    g, a = (ids.guard_uid, ids.guard_gid), (ids.agent_uid, ids.agent_gid)
    out = [
        Volume("guard", guard_dir, *g, 0o700),
        Volume("log", None, *g, 0o700),
        Volume("run", None, 0, 0, 0o777),  # root in the net container has no DAC override
        Volume("home", claude_home, *a, 0o700),
        Volume("workspace", workspace, *a, 0o755, workspace_extra),
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
    for rel, data in vol.extra:
        if not (vol.source / rel).exists():
            info = tarfile.TarInfo(f"{vol.part}/{rel}")
            info.size, info.mode, info.uid, info.gid = len(data), 0o644, vol.uid, vol.gid
            tar.addfile(info, io.BytesIO(data))


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


def fill_volumes(
    *,
    slug: str,
    image: str,
    labels: dict[str, str],
    volumes: Sequence[Volume],
    log_files: Sequence[Path],
) -> None:
    """Create the bottle's volumes afresh and fill them, in one helper run: one tar stream of everything."""
    label_args = [x for k, v in labels.items() for x in ("--label", f"{k}={v}")]
    remove_volumes(slug, [v.part for v in volumes])  # a stale one (a crash) is never trusted
    for vol in volumes:
        name = vol.name(slug)
        engine.check(engine.docker("volume", "create", *label_args, name), f"creating volume {name}")
    log = next(v for v in volumes if v.part == "log")

    def write(stream: IO[bytes]) -> None:
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for vol in volumes:
                try:
                    _add_folder(tar, vol)
                except RecursionError:
                    raise BackendError(
                        f"{vol.source} is nested too deep to send to the engine: flatten it, or use a local engine"
                    ) from None
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


DATA_PARTS = ("log", "home", "workspace")  # what holds the bottle's work: kept until it is home


def bring_home(
    *,
    state: StateDir,
    image: str,
    labels: dict[str, str],
    workspace_home: Path | None,
    work: bool = True,
) -> list[str]:
    """The audit log and the requests, then (with `work`) the transcripts and (to `workspace_home`) the
    workspace, from the bottle's volumes into the state dir; returns what was refused on the way. The log
    travels on its own (the agent cannot write its volume, so nothing it does can keep the log from coming
    home). Volumes that are gone (already brought home and removed) leave what is here as it is. Raises
    TripCut if a trip stopped at a budget (homecoming.py), a BackendError if one failed."""
    slug = state.slug
    names = {p: volume_name(slug, p) for p in DATA_PARTS}
    present = engine.docker("volume", "ls", "--filter", f"name={volume_name(slug, '')}", "--format", "{{.Name}}")
    have = set(engine.check(present, "docker volume ls").stdout.split())
    home = Homecoming(state, where="in its volumes on the engine")
    groups = [["log"]] + ([["home", *(["workspace"] if workspace_home is not None else [])]] if work else [])
    for wanted in groups:
        parts = [p for p in wanted if names[p] in have]
        if not parts or home.stopped:
            continue
        argv = _helper(
            slug,
            image,
            labels,
            [f"{names[p]}:/v/{p}:ro" for p in parts],
            ["tar", "-c", "--numeric-owner", "-C", "/v", *parts],
        )
        with home.trip() as trip:
            result = engine.pipe_out(argv, trip.read)
            # GNU tar's 1 is "some files differ" (a file written while it was read): what came is whole.
            if not home.arrived(trip, result, f"bringing {slug}'s files home from its engine", ok=(0, 1)):
                continue
            home.take_log(trip.dest / "log")
            put_in_place(trip.dest / "home", state.claude_home)
            if workspace_home is not None:
                # Judged for git before it is where anyone reads it (every trip home: stop, pull, verify, ...).
                settle_copy(state, trip.dest / "workspace", lambda _line: None)
                put_in_place(trip.dest / "workspace", workspace_home)
    home.finish(work=work)
    return home.skipped


def remove_volumes(slug: str, parts: Sequence[str]) -> None:
    names = [volume_name(slug, p) for p in parts]
    result = engine.docker("volume", "rm", "-f", *names, timeout=300)
    engine.check(result, f"removing {slug}'s volumes")
