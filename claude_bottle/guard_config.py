"""What the guard is told, built on the host: policy (manifest + live grants), credential routes, honeytokens.

Credential values are read here from the host (environment or file) and written only to the guard's
secrets file (0600, the guard's uid); the agent gets a placeholder and a route URL.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BottleError
from .manifest import BottleSpec, CredentialSpec, EgressRule
from .paths import Roots, check_path, read_host_file
from .state import StateDir, write_private

__all__ = [
    "PLACEHOLDER",
    "Credential",
    "GuardFiles",
    "agent_credential_env",
    "load_grants",
    "make_honeytokens",
    "policy_document",
    "resolve_credentials",
    "save_grants",
    "secrets_document",
]

PLACEHOLDER = "claude-bottle-placeholder"  # what the agent holds instead of a credential
ANTHROPIC_UPSTREAM = "https://api.anthropic.com"
GITHUB_UPSTREAM = "https://github.com"


@dataclass(frozen=True)
class Credential:
    name: str  # the route: /anthropic, /github
    upstream: str
    header: str
    value: str = field(repr=False)  # header value as sent upstream
    secret: str = field(repr=False)  # the raw credential (for DLP)
    kind: str = "api-key"
    source: str = ""


def _read_source(source: str, environ: Mapping[str, str], base: Path, what: str, roots: Roots | None = None) -> str:
    kind, _, ref = source.partition(":")
    if kind == "env":
        value = environ.get(ref, "")
        if not value:
            raise BottleError(f"{what}: {ref} is not set on the host: export it, or change {what}.source")
        return value.strip()
    # Never from a place an agent can read or redirect (any bottle's workspace or rw mounts).
    path = check_path(base / Path(ref).expanduser(), f"{what} file", roots or Roots(), read_by_host=True)
    try:
        value = read_host_file(path).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BottleError(f"{what}: {path} is not text: fix {what}.source") from None
    except OSError as exc:
        raise BottleError(f"{what}: cannot read {path} ({exc.strerror}): fix {what}.source") from None
    if not value:
        raise BottleError(f"{what}: {path} is empty")
    return value


def resolve_credentials(
    bottle: BottleSpec, *, environ: Mapping[str, str], base: Path, roots: Roots | None = None
) -> list[Credential]:
    creds: list[Credential] = []
    spec = bottle.credentials.anthropic
    auto_var = next((v for v in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN") if environ.get(v)), None)
    if spec is not None or auto_var is not None:
        spec = spec or CredentialSpec()
        source = spec.source or f"env:{auto_var or 'ANTHROPIC_API_KEY'}"
        value = _read_source(source, environ, base, "credentials.anthropic", roots)
        oauth = source == "env:CLAUDE_CODE_OAUTH_TOKEN" or value.startswith("sk-ant-oat")
        kind = spec.kind or ("oauth" if oauth else "api-key")
        header, header_value = ("authorization", f"Bearer {value}") if kind == "oauth" else ("x-api-key", value)
        creds.append(
            Credential("anthropic", spec.upstream or ANTHROPIC_UPSTREAM, header, header_value, value, kind, source)
        )
    gh = bottle.credentials.github
    if gh is not None:
        source = gh.source or ("env:GH_TOKEN" if environ.get("GH_TOKEN") else "env:GITHUB_TOKEN")
        token = _read_source(source, environ, base, "credentials.github", roots)
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        creds.append(
            Credential(
                "github", gh.upstream or GITHUB_UPSTREAM, "authorization", f"Basic {basic}", token, "token", source
            )
        )
    return creds


def agent_credential_env(creds: Sequence[Credential], guard_url: str) -> dict[str, str]:
    """The agent's side of each route: where to send requests, and a placeholder to send."""
    env: dict[str, str] = {}
    for c in creds:
        if c.name == "anthropic":
            env["ANTHROPIC_BASE_URL"] = f"{guard_url}/anthropic"
            env["CLAUDE_CODE_OAUTH_TOKEN" if c.kind == "oauth" else "ANTHROPIC_API_KEY"] = PLACEHOLDER
        elif c.name == "github":
            upstream = c.upstream.rstrip("/") + "/"
            env.update(
                GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0=f"url.{guard_url}/github/.insteadOf", GIT_CONFIG_VALUE_0=upstream
            )
    return env


def make_honeytokens() -> dict[str, str]:
    """Fake credentials planted in the agent's home: any use of them outside is an exfiltration attempt."""
    up = string.ascii_uppercase + string.digits
    alnum = string.ascii_letters + string.digits
    return {
        "aws_access_key_id": "AKIA" + "".join(secrets.choice(up) for _ in range(16)),
        "aws_secret_access_key": "".join(secrets.choice(alnum + "/+") for _ in range(40)),
        "npm_token": "npm_" + "".join(secrets.choice(alnum) for _ in range(36)),
    }


def honeytoken_files(tokens: Mapping[str, str]) -> dict[str, str]:
    """Relative home path -> content."""
    return {
        ".aws/credentials": (
            f"[default]\naws_access_key_id = {tokens['aws_access_key_id']}\n"
            f"aws_secret_access_key = {tokens['aws_secret_access_key']}\n"
        ),
        ".npmrc": f"//registry.npmjs.org/:_authToken={tokens['npm_token']}\n",
    }


def _rules(items: Sequence[EgressRule]) -> list[dict[str, Any]]:
    return [{"host": r.host, "ports": list(r.ports), "private": r.private} for r in items]


def policy_document(
    slug: str, bottle: BottleSpec, grants: Sequence[EgressRule] = (), local_names: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "version": 1,
        "bottle": slug,
        "allow": _rules([*bottle.egress.allow, *grants]),
        "deny": _rules(bottle.egress.deny),
        "local_names": dict(local_names or {}),
    }


def secrets_document(creds: Sequence[Credential], honeytokens: Mapping[str, str]) -> dict[str, Any]:
    return {
        "routes": {
            c.name: {"upstream": c.upstream, "header": c.header, "value": c.value, "secret": c.secret} for c in creds
        },
        "honeytokens": sorted(honeytokens.values()),
    }


def load_grants(state: StateDir) -> list[EgressRule]:
    try:
        data = json.loads((state.path / "grants.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    return [EgressRule.model_validate(r) for r in data.get("egress", [])]


def save_grants(state: StateDir, rules: Sequence[EgressRule]) -> None:
    write_private(state.path / "grants.json", json.dumps({"egress": _rules(rules)}, indent=2) + "\n")


@dataclass(frozen=True)
class GuardFiles:
    """The guard's directory in the state dir (mounted read-only into the guard)."""

    state: StateDir

    @property
    def dir(self) -> Path:
        return self.state.path / "guard"

    @property
    def policy(self) -> Path:
        return self.dir / "policy.json"

    @property
    def secrets(self) -> Path:
        return self.dir / "secrets.json"

    def write_policy(self, doc: Mapping[str, Any]) -> None:
        write_private(self.policy, json.dumps(doc, indent=2) + "\n")

    def write_secrets(self, doc: Mapping[str, Any]) -> None:
        write_private(self.secrets, json.dumps(doc) + "\n")

    def drop_secrets(self) -> None:
        """Credentials live on disk only while the bottle runs: zeroed in place (so the value does not
        linger in the file's blocks, or in any other name for the same file), then removed."""
        try:
            fd = os.open(self.secrets, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            size = os.fstat(fd).st_size
            os.pwrite(fd, b"\0" * size, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.secrets.unlink(missing_ok=True)
