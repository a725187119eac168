"""What comes home is unpacked within budgets (unpack.py): a sparse member is refused before it can expand
into data here, a trip past its bytes, members or depth stops where it is and keeps what it unpacked, a
stream that never ends is not read past its budget, and the work is linear in the archive (counted in
folder opens, not timed)."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_bottle.hostfs import unpack as unpack_mod
from claude_bottle.hostfs.unpack import Limits, unpack

BIG = 64 * 1024 * 1024  # what a sparse member claims to be: far more than it carries


def _end(buf: io.BytesIO) -> io.BytesIO:
    buf.seek(0, io.SEEK_END)
    buf.write(b"\0" * 1024)
    buf.seek(0)
    return buf


def _member(tar: tarfile.TarFile, name: str, data: bytes = b"x", **pax: str) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.pax_headers = len(data), dict(pax)
    tar.addfile(info, io.BytesIO(data))


def _pax_sparse(version: str) -> io.BytesIO:
    """A PAX stream whose member `ws/big` is GNU sparse (0.1 or 1.0): 512 bytes of data at the end of a
    BIG-byte file of holes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _member(tar, "ws/before.txt", b"kept\n")
        chunk = b"z" * 512
        if version == "1.0":
            sparse_map = f"1\n{BIG - 512}\n512\n".encode().ljust(512, b"\0")
            keys = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": str(BIG)}
            _member(tar, "ws/GNUSparseFile.0/big", sparse_map + chunk, **keys, **{"GNU.sparse.name": "ws/big"})
        else:
            keys = {"GNU.sparse.size": str(BIG), "GNU.sparse.map": f"{BIG - 512},512"}
            _member(tar, "ws/big", chunk, **keys)
        _member(tar, "ws/after.txt", b"after\n")
    buf.seek(0)
    return buf


def _gnu_sparse() -> io.BytesIO:
    """An old-GNU stream whose member `ws/big` is of type 'S', its sparse map in its header, by hand."""
    info = tarfile.TarInfo("ws/big")
    info.type, info.size = tarfile.GNUTYPE_SPARSE, 512
    head = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    head[386:398] = tarfile.itn(BIG - 512, 12, tarfile.GNU_FORMAT)  # the one chunk: offset ...
    head[398:410] = tarfile.itn(512, 12, tarfile.GNU_FORMAT)  # ... and length
    head[483:495] = tarfile.itn(BIG, 12, tarfile.GNU_FORMAT)  # the size it claims
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head[:512])
    return _end(io.BytesIO(bytes(head) + b"z" * 512))


def _allocated(root: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*"))


@pytest.mark.parametrize("kind", ["pax-1.0", "pax-0.1", "gnu-old"])
def test_a_sparse_member_is_refused_and_nothing_large_is_allocated(tmp_path: Path, kind: str) -> None:
    stream = _gnu_sparse() if kind == "gnu-old" else _pax_sparse(kind.removeprefix("pax-"))
    got = unpack(stream, tmp_path / "in")
    assert _allocated(tmp_path / "in") < 1024 * 1024  # not BIG bytes of zeros written out
    assert not (tmp_path / "in" / "ws" / "big").exists()
    assert got.stopped is not None and "sparse" in got.stopped and got.over_budget
    assert any(s.endswith("big") for s in got.skipped)
    if kind != "gnu-old":
        assert (tmp_path / "in" / "ws" / "before.txt").read_text() == "kept\n"  # what came before stays


class Endless(io.RawIOBase):
    """A tar stream that never ends: one member claiming a terabyte, its data forever. Counts what is read."""

    def __init__(self) -> None:
        info = tarfile.TarInfo("ws/endless.bin")
        info.size = 2**40
        self.head = info.tobuf(format=tarfile.PAX_FORMAT)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = len(b)
        data = self.head[:n] if self.head else b""
        self.head = self.head[len(data) :]
        b[: len(data)] = data
        b[len(data) : n] = b"\0" * (n - len(data))
        self.read_bytes += n
        return n


def test_past_the_byte_budget_the_trip_stops_and_keeps_what_came(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _member(tar, "ws/small.txt", b"small\n")
        _member(tar, "ws/huge.bin", b"h" * (3 * 1024 * 1024))
        _member(tar, "ws/later.txt", b"later\n")
    buf.seek(0)
    got = unpack(buf, tmp_path / "in", limits=Limits(bytes=1024 * 1024))
    ws = tmp_path / "in" / "ws"
    assert (ws / "small.txt").read_text() == "small\n"  # kept
    assert not (ws / "huge.bin").exists() and not (ws / "later.txt").exists()  # no half file, nothing after
    assert got.over_budget and got.stopped == "more than 1.0 MiB to carry, at 'ws/huge.bin'"
    assert got.skipped == ["ws/huge.bin"]
    # A stream that never ends is read to its budget and no further: the trip is cut off, not drained.
    endless = Endless()
    got = unpack(io.BufferedReader(endless), tmp_path / "in2", limits=Limits(bytes=2 * 1024 * 1024))
    assert got.over_budget and got.stopped is not None and got.stopped.startswith("more than 2.0 MiB to carry")
    assert endless.read_bytes < 3 * 1024 * 1024
    assert not (tmp_path / "in2" / "ws" / "endless.bin").exists()
    assert Limits().bytes == unpack_mod.MAX_BYTES  # the budget is named once


def test_past_the_member_budget_the_trip_stops(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(50):
            _member(tar, f"ws/f{i:02}", b"x")
    buf.seek(0)
    got = unpack(buf, tmp_path / "in", limits=Limits(members=10))
    assert sorted(p.name for p in (tmp_path / "in" / "ws").iterdir()) == [f"f{i:02}" for i in range(10)]
    assert got.over_budget and got.stopped == "more than 10 members, at 'ws/f10'"


def test_past_the_depth_budget_the_trip_stops(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _member(tar, "ws/shallow.txt")
        _member(tar, "/".join(["ws", *["d"] * 30, "deep.txt"]))
    buf.seek(0)
    got = unpack(buf, tmp_path / "in", limits=Limits(depth=8))
    assert (tmp_path / "in" / "ws" / "shallow.txt").is_file()
    assert not (tmp_path / "in" / "ws" / "d").exists()
    assert got.over_budget and got.stopped is not None and got.stopped.startswith("a member more than 8 names deep")
    assert Limits().depth == unpack_mod.MAX_DEPTH and Limits().members == unpack_mod.MAX_ENTRIES  # walk.py's


def test_headers_past_their_budget_stop_the_trip(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _member(tar, "ws/ok.txt")
        _member(tar, "ws/" + "n" * (2 * unpack_mod.MAX_HEADER))  # a name of 2 MiB, held in memory to parse
    buf.seek(0)
    got = unpack(buf, tmp_path / "in")
    assert (tmp_path / "in" / "ws" / "ok.txt").is_file()
    assert got.over_budget and got.stopped is not None and "headers of more than 1.0 MiB" in got.stopped


def test_a_broken_stream_is_named_not_a_budget(tmp_path: Path) -> None:
    got = unpack(io.BytesIO(os.urandom(4096)), tmp_path / "in")
    assert got.stopped is not None and got.stopped.startswith("not a whole tar stream") and not got.over_budget


def _deep(depth: int, files_per_folder: int = 1) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        path = "ws"
        for level in range(depth):
            path += f"/d{level}"
            info = tarfile.TarInfo(path)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            for i in range(files_per_folder):
                _member(tar, f"{path}/f{i}")
    buf.seek(0)
    return buf


@pytest.fixture
def folder_opens(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    opens = [0]
    real = os.open

    def counting(path: str, flags: int, *args: object, **kw: object) -> int:
        if flags & os.O_DIRECTORY:
            opens[0] += 1
        return real(path, flags, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", counting)
    yield opens


def test_a_deep_tree_opens_each_folder_once(tmp_path: Path, folder_opens: list[int]) -> None:
    """A tree 200 deep (a folder and a file at each level, in tar's order): each member re-opening its folder
    chain from the root would open about 200 * 200 folders; holding the chain open, each is opened once."""
    got = unpack(_deep(200), tmp_path / "in")
    assert folder_opens[0] <= 200 + 5
    assert (tmp_path / "in" / "ws").joinpath(*[f"d{i}" for i in range(200)], "f0").is_file()
    assert got.stopped is None and got.skipped == []


def test_members_of_one_folder_open_nothing_more(tmp_path: Path, folder_opens: list[int]) -> None:
    got = unpack(_deep(3, files_per_folder=400), tmp_path / "in")
    assert folder_opens[0] <= 3 + 5
    assert got.stopped is None and len(list((tmp_path / "in").rglob("f*"))) == 1200
