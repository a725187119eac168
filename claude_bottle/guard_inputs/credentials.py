"""Credentials for the guard's routes, read on the host (environment or file) and handed only to the guard;
the agent gets a placeholder and a route URL (SPEC G5)."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from claude_bottle.errors import BottleError
from claude_bottle.hostfs.paths import Roots, check_path, read_host_file
from claude_bottle.manifest import BottleSpec, CredentialSpec

__all__ = ["PLACEHOLDER", "Credential", "agent_credential_env", "resolve_credentials"]

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
