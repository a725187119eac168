"""Host-side guard configuration: credentials from the host, placeholders for the agent, grants, pipelock."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from claude_bottle.bottle.state import BottleRecord, StateDir
from claude_bottle.errors import BottleError
from claude_bottle.guard_inputs.credentials import PLACEHOLDER, agent_credential_env, resolve_credentials
from claude_bottle.guard_inputs.files import GuardFiles, load_grants, policy_document
from claude_bottle.guard_inputs.inputs import honeytoken_files, make_honeytokens, secrets_document
from claude_bottle.guard_inputs.pipelock import pipelock_config, to_yaml
from claude_bottle.hostfs.paths import Roots
from claude_bottle.manifest import EgressRule, parse_manifest
from claude_bottle.work.requests import grant_egress

KEY = "sk-ant-api03-" + "a" * 40
OAUTH = "sk-ant-oat01-" + "b" * 40


def bottle(extra: str = "") -> object:
    return parse_manifest(
        f"[bottles.default]\n[bottles.default.egress]\nallow = ['a.example']\n{extra}\n[agents.claude]\n"
    ).bottles["default"]


def test_anthropic_on_by_default_when_the_host_has_a_key(tmp_path: Path) -> None:
    (cred,) = resolve_credentials(bottle(), environ={"ANTHROPIC_API_KEY": KEY}, base=tmp_path)  # type: ignore[arg-type]
    assert (cred.name, cred.upstream, cred.header, cred.value, cred.kind) == (
        "anthropic",
        "https://api.anthropic.com",
        "x-api-key",
        KEY,
        "api-key",
    )
    env = agent_credential_env([cred], "http://egress:3128")
    assert env == {"ANTHROPIC_BASE_URL": "http://egress:3128/anthropic", "ANTHROPIC_API_KEY": PLACEHOLDER}
    assert KEY not in repr(cred)
    assert resolve_credentials(bottle(), environ={}, base=tmp_path) == []  # type: ignore[arg-type]


def test_oauth_token_becomes_a_bearer_header(tmp_path: Path) -> None:
    (cred,) = resolve_credentials(bottle(), environ={"CLAUDE_CODE_OAUTH_TOKEN": OAUTH}, base=tmp_path)  # type: ignore[arg-type]
    assert (cred.header, cred.value, cred.kind) == ("authorization", f"Bearer {OAUTH}", "oauth")
    assert agent_credential_env([cred], "http://g")["CLAUDE_CODE_OAUTH_TOKEN"] == PLACEHOLDER


def test_file_source_and_custom_upstream(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text(OAUTH + "\n")
    b = bottle("[bottles.default.credentials.anthropic]\nsource = 'file:tok'\nupstream = 'http://gw.lan:8080/v'\n")
    (cred,) = resolve_credentials(b, environ={}, base=tmp_path)  # type: ignore[arg-type]
    assert (cred.upstream, cred.kind, cred.secret) == ("http://gw.lan:8080/v", "oauth", OAUTH)


@pytest.mark.parametrize(
    ("extra", "environ", "message"),
    [
        (
            "[bottles.default.credentials.anthropic]\nsource = 'env:NOPE'\n",
            {},
            "credentials.anthropic: NOPE is not set on the host: export it, or change credentials.anthropic.source",
        ),
        ("[bottles.default.credentials.anthropic]\nsource = 'file:missing'\n", {}, "cannot read"),
        ("[bottles.default.credentials.github]\n", {}, "GITHUB_TOKEN is not set on the host"),
    ],
)
def test_missing_credentials_say_the_fix(tmp_path: Path, extra: str, environ: dict[str, str], message: str) -> None:
    with pytest.raises(BottleError, match=message):
        resolve_credentials(bottle(extra), environ=environ, base=tmp_path)  # type: ignore[arg-type]


def test_github_route_and_git_rewrite(tmp_path: Path) -> None:
    b = bottle("[bottles.default.credentials.github]\n")
    (cred,) = resolve_credentials(b, environ={"GITHUB_TOKEN": "ghp_x"}, base=tmp_path)  # type: ignore[arg-type]
    assert cred.value == "Basic " + base64.b64encode(b"x-access-token:ghp_x").decode()
    env = agent_credential_env([cred], "http://egress:3128")
    assert env["GIT_CONFIG_KEY_0"] == "url.http://egress:3128/github/.insteadOf"
    assert env["GIT_CONFIG_VALUE_0"] == "https://github.com/"
    assert "ghp_x" not in json.dumps(env)
    doc = secrets_document([cred], {"t": "AKIA0000000000000000"})
    assert doc["routes"]["github"]["secret"] == "ghp_x" and doc["honeytokens"] == ["AKIA0000000000000000"]


def test_honeytokens_look_real_and_differ_per_bottle() -> None:
    a, b = make_honeytokens(), make_honeytokens()
    assert a != b and a["aws_access_key_id"].startswith("AKIA") and len(a["aws_access_key_id"]) == 20
    files = honeytoken_files(a)
    assert a["npm_token"] in files[".npmrc"] and a["aws_secret_access_key"] in files[".aws/credentials"]


def test_bad_credential_spec_in_manifest() -> None:
    with pytest.raises(BottleError, match='expected "env:VARIABLE" or "file:PATH"'):
        bottle("[bottles.default.credentials.anthropic]\nsource = 'ANTHROPIC_API_KEY'\n")


def test_grants_rewrite_the_live_policy_and_are_kept(tmp_path: Path) -> None:
    state = StateDir("claude-abcde", tmp_path)
    state.create()
    b = bottle()
    state.write(
        BottleRecord(
            slug=state.slug,
            agent="claude",
            bottle="default",
            backend="docker",
            manifest={"bottle": b.model_dump(mode="json")},
        )
    )  # type: ignore[attr-defined]
    files = GuardFiles(state)
    files.dir.mkdir()
    files.write_policy(policy_document(state.slug, [r.rule() for r in b.egress.allow], []))  # type: ignore[attr-defined]
    grant_egress(state, [EgressRule.model_validate("new.example:8443").rule()])
    allow = json.loads(files.policy.read_text())["allow"]
    assert {"host": "new.example", "ports": [8443], "private": False} in allow
    assert [g.host for g in load_grants(state)] == ["new.example"]
    with pytest.raises(BottleError, match="was never granted"):
        grant_egress(state, [EgressRule.model_validate("other.example").rule()], revoke=True)
    grant_egress(state, [EgressRule.model_validate("new.example:8443").rule()], revoke=True)
    assert [r["host"] for r in json.loads(files.policy.read_text())["allow"]] == ["a.example"]
    actions = [json.loads(x) for x in state.audit_path.read_text().splitlines()]
    assert [a["action"] for a in actions] == ["grant", "revoke"]


def test_pipelock_yaml_shape() -> None:
    b = bottle().model_copy(
        update={
            "egress": bottle().egress.model_copy(  # type: ignore[attr-defined]
                update={
                    "allow": (
                        EgressRule.model_validate("*.example.com"),
                        EgressRule.model_validate({"host": "db.lan", "private": True}),
                    )
                }
            )
        }
    )
    doc = yaml.safe_load(to_yaml(pipelock_config(b)))  # type: ignore[arg-type]
    assert doc["version"] == 1 and doc["mode"] == "strict"
    assert doc["api_allowlist"] == ["*.example.com", "db.lan"]
    assert doc["forward_proxy"] == {"enabled": True, "sni_verification": True}
    assert doc["sentry"] == {"enabled": False}
    assert doc["internal"] == []  # a private rule needs pipelock's SSRF ranges opened
    assert doc["logging"]["format"] == "json"
    names = {p["name"] for p in doc["dlp"]["patterns"]}
    assert {"anthropic-key", "aws-access-key", "private-key"} <= names
    import re

    for p in doc["dlp"]["patterns"]:
        re.compile(p["regex"])  # survived the YAML round trip intact
    assert "internal" not in yaml.safe_load(to_yaml(pipelock_config(bottle())))  # type: ignore[arg-type]
    assert set(doc) <= {
        "version",
        "mode",
        "enforce",
        "api_allowlist",
        "forward_proxy",
        "dlp",
        "logging",
        "internal",
        "sentry",
    }


def test_a_credential_file_inside_the_workspace_is_refused(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    roots = Roots(((ws, "this bottle"),))
    (ws / "key").write_text(KEY)
    b = bottle("[bottles.default.credentials.anthropic]\nsource = 'file:key'\n")
    with pytest.raises(BottleError, match=r"lies in this bottle's writable files.*move it outside"):
        resolve_credentials(b, environ={}, base=ws, roots=roots)  # type: ignore[arg-type]
    outside = tmp_path / "secrets"
    outside.mkdir()
    (outside / "key").write_text(KEY)
    (ws / "link").symlink_to(outside / "key")  # a symlink from the workspace is refused too
    b = bottle("[bottles.default.credentials.anthropic]\nsource = 'file:link'\n")
    with pytest.raises(BottleError, match="passes through the symbolic link"):
        resolve_credentials(b, environ={}, base=ws, roots=roots)  # type: ignore[arg-type]
    b = bottle(f"[bottles.default.credentials.anthropic]\nsource = 'file:{outside / 'key'}'\n")
    (cred,) = resolve_credentials(b, environ={}, base=ws, roots=roots)  # type: ignore[arg-type]
    assert cred.secret == KEY
