"""`grant --save`: add what the operator granted to the bottle in its manifest, keeping every comment,
key and the layout as they are (tomlkit edits the document; nothing is re-serialised from models).

Only the manifest content the operator trusted is edited (an edit nobody reviewed must not be trusted along
with the grant): under the trust lock its bytes are read once and checked against the trust store, those
bytes are edited and checked to still load, the file is replaced atomically if it is still what was read,
and exactly the bytes written are trusted, since the operator made this change."""

from __future__ import annotations

import os
from pathlib import Path

import tomlkit
from tomlkit.items import Array, Table

from claude_bottle.bottle.state import StateDir, bottle_home, write_private
from claude_bottle.errors import BottleError
from claude_bottle.manifest import parse_manifest
from claude_bottle.manifest.trust import trust_bytes, trust_lock, untrusted

__all__ = ["add_to_manifest", "save_grants_to_manifest"]

KEYS = {"apt": "packages", "pip": "pip", "npm": "npm"}


def _array(table: Table, key: str) -> Array:
    if key not in table:
        table[key] = tomlkit.array()
    value = table[key]
    if not isinstance(value, Array):
        raise BottleError(f"{key} in the manifest is not a list: add the grant by hand")
    return value


def add_to_manifest(text: str, bottle: str, labels: list[str]) -> str:
    """The manifest's text with each `kind:name` added to bottles.<bottle> (once)."""
    doc = tomlkit.parse(text)
    bottles = doc.setdefault("bottles", tomlkit.table(is_super_table=True))
    if bottle not in bottles:
        bottles[bottle] = tomlkit.table()
    table = bottles[bottle]
    for label in labels:
        kind, _, name = label.partition(":")
        if kind == "egress":
            egress = table.setdefault("egress", tomlkit.table())
            target = _array(egress, "allow")
        else:
            target = _array(table, KEYS[kind])
        if name not in [str(v) for v in target]:
            target.append(name)
    return tomlkit.dumps(doc)


def _read(path: Path) -> tuple[bytes, os.stat_result]:
    """The file's bytes and what it is (never through a symlink: path is resolved)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return f.read(), os.fstat(f.fileno())


def save_grants_to_manifest(state: StateDir, labels: list[str]) -> Path:
    record = state.read_whole()
    if not record.manifest_path:
        raise BottleError(f"{state.slug} was started without a manifest file: nothing to save into")
    path = Path(record.manifest_path).resolve()
    what = ", ".join(labels)
    home = bottle_home()
    with trust_lock(home):
        try:
            raw, seen = _read(path)
        except OSError as exc:
            raise BottleError(f"cannot read {path} ({exc.strerror}): granted {what}, but not saved") from None
        why = untrusted(path, raw, home=home)
        if why is not None:
            raise BottleError(
                f"{path} is not trusted ({why}): granted {what}, but not saved; "
                f"review the change with `claude-bottle trust {path}`, then add {what} to it"
            )
        new = add_to_manifest(raw.decode("utf-8"), record.bottle, labels)  # trusted bytes parsed as UTF-8
        parse_manifest(new, path=path)  # still a valid manifest

        def still_what_was_read() -> None:
            # Another writer (an agent with the project mounted) is never overwritten, nor its bytes trusted.
            try:
                now, st = _read(path)
            except OSError:
                now, st = b"", None
            if now != raw or st is None or (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
                raise BottleError(
                    f"{path} changed while the grant was being saved: granted {what}, but not saved; "
                    f"review the change with `claude-bottle trust {path}`, then add {what} to it"
                )

        data = new.encode("utf-8")
        write_private(path, data, mode=seen.st_mode & 0o777, before_replace=still_what_was_read)
        trust_bytes(path, data, home=home)  # the bytes written, never the file read again
    return path
