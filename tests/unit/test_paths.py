"""Host paths no agent can steer (issue 9 finding 10; issue 14's state-root workspaces)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_bottle.errors import BottleError
from claude_bottle.hostfs.paths import (
    Roots,
    check_bottle_paths,
    check_path,
    file_identity,
    verify_mounts,
    writable_roots,
)
from claude_bottle.manifest import parse_manifest


def record(state_root: Path, slug: str, writable: list[Path]) -> None:
    d = state_root / slug
    d.mkdir(parents=True)
    (d / "bottle.json").write_text(
        json.dumps(
            {
                "slug": slug,
                "agent": "a",
                "bottle": "b",
                "backend": "docker",
                "workspace": str(writable[0]),
                "writable": [str(p) for p in writable],
            }
        )
    )


def bottle(mounts: str = "", ca: str = "") -> object:
    text = f"[bottles.default]\n{mounts}\n{ca}\n[agents.claude]\n"
    return parse_manifest(text).bottles["default"]


def check(tmp_path: Path, ws: Path, b: object, base: Path | None = None) -> object:
    home = tmp_path / "home"
    return check_bottle_paths(
        b,
        ws,
        base or tmp_path,
        state_roots=[home / "state"],
        state_home=home,
        home=tmp_path / "user",  # type: ignore[arg-type]
    )


def test_another_agents_link_cannot_redirect_a_workspace(tmp_path: Path) -> None:
    """Agent a (workspace /w) replaced /w/inner with a link to the user's home; bottle inner is refused."""
    w, user = tmp_path / "w", tmp_path / "user"
    w.mkdir()
    user.mkdir()
    record(tmp_path / "home" / "state", "a-abcde", [w])
    (w / "inner").symlink_to(user)
    with pytest.raises(BottleError, match=r"passes through the symbolic link .*/w/inner, inside bottle a-abcde"):
        check(tmp_path, w / "inner", bottle())
    # The control: the same layout with a real folder is fine (nested workspaces are legitimate).
    (w / "inner").unlink()
    (w / "inner").mkdir()
    assert check(tmp_path, w / "inner", bottle()).workspace == w / "inner"  # type: ignore[attr-defined]


def test_a_link_in_an_rw_mount_cannot_redirect_a_later_mount(tmp_path: Path) -> None:
    ws, shared, etc = tmp_path / "ws", tmp_path / "shared", tmp_path / "etc"
    for d in (ws, shared, etc):
        d.mkdir()
    (shared / "sub").symlink_to(etc)
    mounts = (
        f'mounts = [{{ host = "{shared}", guest = "/s", mode = "rw" }}, {{ host = "{shared}/sub", guest = "/sub" }}]'
    )
    with pytest.raises(BottleError, match="inside this bottle's writable files"):
        check(tmp_path, ws, bottle(mounts))
    (shared / "sub").unlink()
    (shared / "sub").mkdir()
    paths = check(tmp_path, ws, bottle(mounts))
    assert [m[1] for m in paths.mounts] == ["/s", "/sub"]  # type: ignore[attr-defined]
    assert paths.writable == (ws, shared)  # type: ignore[attr-defined]


def test_files_the_host_reads_never_come_from_an_agents_files(tmp_path: Path) -> None:
    w, ws = tmp_path / "w", tmp_path / "ws"
    w.mkdir()
    ws.mkdir()
    (w / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    record(tmp_path / "home" / "state", "a-abcde", [w])
    with pytest.raises(BottleError, match=r"ca_certs .* lies in bottle a-abcde's writable files"):
        check(tmp_path, ws, bottle(ca=f'ca_certs = "{w}/ca.crt"'))


@pytest.mark.parametrize("where", ["state", "home", "root"])
def test_a_workspace_may_not_hold_the_state_root_or_be_home_or_root(tmp_path: Path, where: str) -> None:
    (tmp_path / "user").mkdir()
    (tmp_path / "home").mkdir()
    ws = {"state": tmp_path, "home": tmp_path / "user", "root": Path("/")}[where]
    with pytest.raises(BottleError, match=r"holds the claude-bottle state root|your home directory|is /"):
        check(tmp_path, ws, bottle())


def test_a_mount_may_not_expose_the_state_root(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "home").mkdir()
    with pytest.raises(BottleError, match=r"mount source .* holds the claude-bottle state root"):
        check(tmp_path, ws, bottle(f'mounts = [{{ host = "{tmp_path}", guest = "/all" }}]'))


def test_writable_roots_come_from_every_record(tmp_path: Path) -> None:
    record(tmp_path, "a-abcde", [tmp_path / "w1", tmp_path / "rw1"])
    (tmp_path / "junk").mkdir()  # a dir without a record is not a bottle
    roots = writable_roots([tmp_path])
    assert roots.holding(tmp_path / "rw1" / "x") == "bottle a-abcde"
    assert roots.holding(tmp_path / "other") is None


def test_check_path_follows_links_outside_agent_files(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)  # the user's own link: fine
    assert check_path(tmp_path / "alias" / ".." / "real", "x", Roots()) == real


def test_identity_and_mount_verification(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    dev, ino = file_identity(a)
    assert verify_mounts(f"{dev}:{ino} /workspace\n", [("/workspace", dev, ino)]) is None
    dev_b, ino_b = file_identity(b)
    assert verify_mounts(f"{dev_b}:{ino_b} /workspace\n", [("/workspace", dev, ino)]) == "/workspace"
    assert verify_mounts("", [("/workspace", dev, ino)]) == "/workspace"
    (tmp_path / "l").symlink_to(a)
    with pytest.raises(OSError):  # a link where a checked path was: refused, not followed
        file_identity(tmp_path / "l")


def test_the_hosts_ca_bundle_is_trusted_unless_the_manifest_opts_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "etc" / "ca-certificates.crt"
    bundle.parent.mkdir()
    bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr("claude_bottle.hostfs.paths.HOST_CA_BUNDLES", (tmp_path / "absent.crt", bundle))
    ws = tmp_path / "ws"
    ws.mkdir()
    assert check(tmp_path, ws, bottle()).ca_certs == bundle  # type: ignore[attr-defined]
    assert check(tmp_path, ws, bottle(ca="host_ca = false")).ca_certs is None  # type: ignore[attr-defined]
    own = tmp_path / "own.crt"
    own.write_text(bundle.read_text())
    assert check(tmp_path, ws, bottle(ca=f'ca_certs = "{own}"')).ca_certs == own  # type: ignore[attr-defined]
    monkeypatch.setattr("claude_bottle.hostfs.paths.HOST_CA_BUNDLES", (tmp_path / "absent.crt",))
    assert check(tmp_path, ws, bottle()).ca_certs is None  # type: ignore[attr-defined]
