"""An allowlist from the project (issue 15, item 4): sample projects of each ecosystem, written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_bottle.bottle.state import bottle_home
from claude_bottle.cli import main
from claude_bottle.manifest import load_manifest
from claude_bottle.manifest.suggest import suggest, toml_lines
from claude_bottle.manifest.trust import trust_file

PROJECTS: dict[str, dict[str, str]] = {
    "npm": {
        "package.json": '{"dependencies": {"left-pad": "^1.3.0", "mylib": "github:acme/mylib"}}',
        "package-lock.json": '{"packages": {"node_modules/left-pad": {"resolved": '
        '"https://registry.npmjs.org/left-pad/-/left-pad-1.3.0.tgz"}, "node_modules/x": {"resolved": '
        '"https://npm.corp.example/x/-/x-1.0.0.tgz"}}}',
        ".npmrc": "@corp:registry=https://npm.corp.example/\n",
    },
    "pnpm": {
        "pnpm-lock.yaml": "packages:\n  /a@1.0.0:\n    resolution: {tarball: https://registry.npmjs.org/a/-/a-1.0.0.tgz}\n"
    },
    "yarn": {"yarn.lock": 'a@^1:\n  resolved "https://registry.yarnpkg.com/a/-/a-1.0.0.tgz#abc"\n'},
    "pip": {
        "requirements.txt": "--extra-index-url https://pypi.corp.example/simple\nrequests>=2\n"
        "git+https://git.corp.example/team/tool.git@v1#egg=tool\n",
    },
    "uv": {
        "pyproject.toml": '[project]\nname = "x"\ndependencies = ["httpx"]\n[[tool.uv.index]]\nurl = '
        '"https://uv.corp.example/simple"\n',
        "uv.lock": '[[package]]\nname = "httpx"\nsource = { registry = "https://pypi.org/simple" }\n',
    },
    "poetry": {
        "poetry.lock": '[[package]]\nname = "a"\n[package.source]\nurl = "https://poetry.corp.example/simple"\n'
    },
    "cargo": {
        "Cargo.toml": '[dependencies]\nserde = "1"\nmine = { git = "https://gitlab.com/me/mine.git" }\n',
        "Cargo.lock": '[[package]]\nname = "serde"\nsource = "registry+https://github.com/rust-lang/crates.io-index"\n',
    },
    "go": {"go.mod": "module example.com/x\n\nrequire github.com/pkg/errors v0.9.1\n"},
    "gem": {
        "Gemfile": 'source "https://rubygems.org"\ngem "rails"\ngem "priv", git: "git@bitbucket.org:me/priv.git"\n'
    },
}

EXPECTED: dict[str, dict[str, str]] = {  # host -> the file that names it
    "npm": {
        "registry.npmjs.org": ".npmrc",  # the first file read names a registry host first
        "npm.corp.example": ".npmrc",
        "github.com": "package.json",
    },
    "pnpm": {"registry.npmjs.org": "pnpm-lock.yaml"},
    "yarn": {"registry.npmjs.org": "yarn.lock", "registry.yarnpkg.com": "yarn.lock"},
    "pip": {
        "pypi.org": "requirements.txt",
        "files.pythonhosted.org": "requirements.txt",
        "pypi.corp.example": "requirements.txt",
        "git.corp.example": "requirements.txt",
    },
    "uv": {
        "pypi.org": "pyproject.toml",
        "files.pythonhosted.org": "pyproject.toml",
        "uv.corp.example": "pyproject.toml",
    },
    "poetry": {
        "pypi.org": "poetry.lock",
        "files.pythonhosted.org": "poetry.lock",
        "poetry.corp.example": "poetry.lock",
    },
    "cargo": {
        "index.crates.io": "Cargo.lock",
        "static.crates.io": "Cargo.lock",
        "crates.io": "Cargo.lock",
        "github.com": "Cargo.lock",
        "gitlab.com": "Cargo.toml",
    },
    "go": {"proxy.golang.org": "go.mod", "sum.golang.org": "go.mod"},
    "gem": {"rubygems.org": "Gemfile", "index.rubygems.org": "Gemfile", "bitbucket.org": "Gemfile"},
}


@pytest.mark.parametrize("ecosystem", sorted(PROJECTS))
def test_each_ecosystem_names_its_hosts_and_the_file_that_asked(tmp_path: Path, ecosystem: str) -> None:
    for name, text in PROJECTS[ecosystem].items():
        (tmp_path / name).write_text(text)
    got = {s.host: s.source for s in suggest(tmp_path)}
    assert got == EXPECTED[ecosystem]


def test_nothing_is_read_from_vendored_trees_or_links(tmp_path: Path) -> None:
    (tmp_path / "node_modules" / "x").mkdir(parents=True)
    (tmp_path / "node_modules" / "x" / "package.json").write_text('{"a": "https://evil.example/"}')
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "requirements.txt").write_text("https://linked.example/a.whl\n")
    (tmp_path / "linked").symlink_to(tmp_path / "elsewhere")
    hosts = {s.host for s in suggest(tmp_path)}
    assert "evil.example" not in hosts
    assert hosts == {"linked.example", "pypi.org", "files.pythonhosted.org"}  # through the real dir only once


def test_allowed_hosts_are_not_proposed_again(tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text("module x\n")
    lines = toml_lines(suggest(tmp_path), allowed=["proxy.golang.org", "*.golang.org"])
    assert lines == []
    (tmp_path / "Gemfile").write_text('source "https://rubygems.org"\n')
    (line,) = [ln for ln in toml_lines(suggest(tmp_path), allowed=["index.rubygems.org"]) if "rubygems" in ln]
    assert line.startswith('  "rubygems.org",') and line.endswith("# registry: Gemfile")


def test_init_writes_the_projects_registries_with_their_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, text in PROJECTS["pip"].items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    text = (tmp_path / "claude-bottle.toml").read_text()
    assert '  "pypi.corp.example",' in text and "# index: requirements.txt" in text
    m = load_manifest(tmp_path / "claude-bottle.toml")  # still a valid manifest
    assert {"api.anthropic.com", "pypi.org", "git.corp.example"} <= {r.host for r in m.bottles["default"].egress.allow}


def test_suggest_names_what_the_manifest_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    (tmp_path / "Cargo.toml").write_text('[dependencies]\nserde = "1"\n')
    capsys.readouterr()
    assert main(["suggest", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert {s["host"] for s in got} == {"index.crates.io", "static.crates.io", "crates.io"}
    assert {s["source"] for s in got} == {"Cargo.toml"}
    trust_file(tmp_path / "claude-bottle.toml", home=bottle_home())
