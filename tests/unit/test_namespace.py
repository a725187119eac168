"""Namespaces: every object a CLI makes is named and labelled with its namespace, and its verbs see only
that namespace's bottles (so tests, benchmarks and the demo never touch a user's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_bottle.backend.docker.compose import container_name, project_name
from claude_bottle.bottle.state import BottleRecord, StateDir, all_state_roots, list_state_dirs, state_root
from claude_bottle.cli import main
from claude_bottle.errors import BottleError
from claude_bottle.identity import Identity, namespace, owned_by


def test_the_default_and_a_chosen_namespace(monkeypatch: pytest.MonkeyPatch, isolated_home: Path) -> None:
    assert namespace() == "claude-bottle"
    assert project_name("claude-abcde") == "claude-bottle-claude-abcde"
    assert state_root() == isolated_home / "state"
    monkeypatch.setenv("CLAUDE_BOTTLE_NAMESPACE", "cbtest-1a2b")
    assert namespace() == "cbtest-1a2b"
    assert container_name("claude-abcde", "agent") == "cbtest-1a2b-claude-abcde-agent"
    assert state_root() == isolated_home / "state.cbtest-1a2b"
    labels = Identity("claude-abcde", "docker", 1, 1.0, "t", namespace()).labels()
    assert labels["claude-bottle.namespace"] == "cbtest-1a2b" and owned_by(labels, "cbtest-1a2b")
    assert not owned_by(labels, "claude-bottle")


@pytest.mark.parametrize("bad", ["Upper", "1abc", "a_b", "a--b", "a-", "x" * 25, "a b", "a/b"])
def test_a_bad_namespace_is_one_line_naming_the_fix(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("CLAUDE_BOTTLE_NAMESPACE", bad)
    with pytest.raises(BottleError, match=r"^CLAUDE_BOTTLE_NAMESPACE=.*lowercase letters.*unset it") as e:
        namespace()
    assert "\n" not in str(e.value)


def test_ownership_by_labels_not_names() -> None:
    assert owned_by({"claude-bottle.slug": "claude-abcde"}, "claude-bottle")  # made before namespaces
    assert not owned_by({"claude-bottle.slug": "claude-abcde"}, "cbtest-x")
    assert not owned_by({}, "claude-bottle")  # a user's `claude-bottle-*` object: not ours
    assert not owned_by({"com.docker.compose.project": "claude-bottle-app"}, "claude-bottle")


def test_verbs_see_only_their_namespace(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    mine = StateDir("claude-aaaaa")
    mine.create()
    mine.write(BottleRecord(slug="claude-aaaaa", agent="claude", bottle="default", backend="fake", status="stopped"))
    monkeypatch.setenv("CLAUDE_BOTTLE_NAMESPACE", "cbtest-x")
    assert list_state_dirs() == []
    assert main(["stop", "claude-aaaaa", "--rm"]) == 1
    assert "no bottle matches 'claude-aaaaa'" in capsys.readouterr().err
    monkeypatch.delenv("CLAUDE_BOTTLE_NAMESPACE")
    assert [d.slug for d in list_state_dirs()] == ["claude-aaaaa"]  # untouched
    assert len(all_state_roots()) == 1


def test_an_agent_writable_path_counts_in_every_namespace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from claude_bottle.hostfs.paths import writable_roots

    other = StateDir("claude-bbbbb", state_root("cbtest-y"))
    other.create()
    other.write(
        BottleRecord(
            slug="claude-bbbbb", agent="claude", bottle="d", backend="fake", workspace=str(tmp_path / "their-ws")
        )
    )
    planted = tmp_path / "their-ws" / "claude-bottle.toml"
    assert writable_roots(all_state_roots()).holding(planted) == "bottle claude-bbbbb"
