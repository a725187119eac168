from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_bottle.errors import ManifestError
from claude_bottle.manifest import (
    EgressRule,
    find_manifest,
    load_manifest,
    parse_manifest,
    starter_manifest,
)

MINIMAL = """
[bottles.default]
[agents.claude]
"""


def test_starter_manifest_is_valid_and_trusts_the_host_ca(tmp_path: Path) -> None:
    m = parse_manifest(starter_manifest(), path=tmp_path / "claude-bottle.toml")
    assert m.agents["claude"].bottle == "default"
    assert [r.host for r in m.bottles["default"].egress.allow] == ["api.anthropic.com"]
    assert m.bottles["default"].ca_certs is None and m.bottles["default"].host_ca


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("pip", ["requests>=2", "requests[socks]>=2,<3", "Django == 4.2"], ["-e x", "x; rm -rf /", "p @ https://x"]),
        ("npm", ["typescript@^5.4", "@types/node@>=20 <21"], ["--foo", "a;b", "a$(id)"]),
        ("packages", ["jq", "ripgrep=13.0", "libc6:amd64", "x/bookworm-backports"], ["-x", "a b", "a`id`"]),
    ],
)
def test_package_specifiers_pass_and_options_or_shell_do_not(kind: str, good: list[str], bad: list[str]) -> None:
    for g in good:
        assert getattr(
            parse_manifest(f"[bottles.default]\n{kind} = [{json.dumps(g)}]\n[agents.c]\n").bottles["default"], kind
        ) == (g,)
    for b in bad:
        with pytest.raises(ManifestError, match=rf"bottles.default.{kind}: .* is not a"):
            parse_manifest(f"[bottles.default]\n{kind} = [{json.dumps(b)}]\n[agents.c]\n")


def test_defaults() -> None:
    m = parse_manifest(MINIMAL)
    b = m.bottles["default"]
    assert b.base_image == "debian:bookworm-slim"
    assert b.resources.pids == 1024
    assert m.agents["claude"].bottle == "default"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[bottles.default]\nbase_imag = 'x'\n[agents.a]\n",
            "m.toml: bottles.default: unknown key 'base_imag' (valid keys: backend, base_image,",
        ),
        ("[bottles.default.egress]\nallow = [1]\n[agents.a]\n", "m.toml: bottles.default.egress.allow[0]"),
        ("[bottles.default.egress]\nallow = ['bad host!']\n[agents.a]\n", "'bad host!' is not a host pattern"),
        ("[bottles.default.egress]\nallow = ['h.example:http']\n[agents.a]\n", "port must be a number"),
        (
            "[bottles.default.egress]\nallow = [{ host = 'h.example', ports = [0] }]\n[agents.a]\n",
            "ports must be a non-empty list",
        ),
        (
            "[bottles.default]\n[agents.a]\nbottle = 'nope'\n",
            "agents.a.bottle: no bottle named 'nope' (defined: default)",
        ),
        ("[bottles.Default]\n", "'Default' is not a valid name"),
        ("[bottles.default\n", "m.toml: not valid TOML"),
        ("[bottles.default.resources]\nmemory = 'lots'\n", "bottles.default.resources.memory"),
        ("[bottles.default]\npackages = ['ok', 'x; rm -rf /']\n", "'x; rm -rf /' is not a Debian package"),
        ("[bottles.default]\nclaude_code_version = 'newest'\n", "bottles.default.claude_code_version"),
        ("[bottle.default]\n", "unknown key 'bottle' (valid keys: agents, bottles)"),
    ],
)
def test_errors_name_file_key_path_and_expectation(text: str, expected: str) -> None:
    with pytest.raises(ManifestError) as exc:
        parse_manifest(text, path=Path("m.toml"))
    msg = str(exc.value)
    assert expected in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("spec", "host", "ports", "private"),
    [
        ("api.example.com", "api.example.com", (443, 80), False),
        ("*.Example.COM.", "*.example.com", (443, 80), False),
        ("host.example:8080", "host.example", (8080,), False),
        ("[::1]:8443", "::1", (8443,), False),
        ({"host": "svc.lan", "ports": [5432], "private": True}, "svc.lan", (5432,), True),
    ],
)
def test_egress_rule_forms(spec: object, host: str, ports: tuple[int, ...], private: bool) -> None:
    rule = EgressRule.model_validate(spec)
    assert (rule.host, rule.ports, rule.private) == (host, ports, private)


def test_find_manifest_walks_up(tmp_path: Path) -> None:
    (tmp_path / "claude-bottle.toml").write_text(MINIMAL)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_manifest(deep) == tmp_path / "claude-bottle.toml"


def test_find_manifest_falls_back_to_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "manifest.toml").write_text(MINIMAL)
    assert find_manifest(tmp_path, home=home) == home / "manifest.toml"


def test_missing_manifest_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="run `claude-bottle init`"):
        find_manifest(tmp_path, home=tmp_path / "nohome")
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path / "nope.toml")


def test_workspace_default_and_relative(tmp_path: Path) -> None:
    path = tmp_path / "claude-bottle.toml"
    path.write_text(MINIMAL + "workspace = 'ws'\n[agents.b]\n")
    m = load_manifest(path)
    assert m.workspace("claude") == (tmp_path / "ws").resolve()
    assert m.workspace("b") == tmp_path.resolve()
    with pytest.raises(ManifestError, match="no agent named 'x' \\(defined: b, claude\\)"):
        m.agent("x")
