"""`grant --save`: add what the operator granted to the bottle in its manifest, keeping every comment,
key and the layout as they are (tomlkit edits the document; nothing is re-serialised from models).

The edited manifest is checked (it must still load) before it replaces the old one, atomically; it is
then trusted, since the operator made this change."""

from __future__ import annotations

from pathlib import Path

import tomlkit
from tomlkit.items import Array, Table

from .errors import BottleError
from .state import StateDir, bottle_home, write_private

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


def save_grants_to_manifest(state: StateDir, labels: list[str]) -> Path:
    from .manifest import load_manifest
    from .trust import trust_file

    record = state.read_whole()
    if not record.manifest_path:
        raise BottleError(f"{state.slug} was started without a manifest file: nothing to save into")
    path = Path(record.manifest_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BottleError(f"cannot read {path} ({exc.strerror}): granted, but not saved") from None
    new = add_to_manifest(text, record.bottle, labels)
    tmp = path.with_name(f".{path.name}.claude-bottle-check")
    write_private(tmp, new, mode=path.stat().st_mode & 0o777)
    try:
        load_manifest(tmp)  # still a valid manifest
    finally:
        tmp.unlink(missing_ok=True)
    write_private(path, new, mode=path.stat().st_mode & 0o777)
    trust_file(path, home=bottle_home())
    return path
