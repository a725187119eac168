"""The guard's inputs for a bottle about to start, prepared once on the host outside any backend:
credentials resolved, honeytokens planted, the policy (manifest + grants) and secrets written (or
pipelock's config), ownership handed to the container users. A backend only mounts and runs them."""

from __future__ import annotations

import os
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claude_bottle.bottle.capabilities import guard_decisions
from claude_bottle.bottle.state import StateDir, write_private
from claude_bottle.guard_inputs.credentials import Credential, agent_credential_env, resolve_credentials
from claude_bottle.guard_inputs.files import GuardFiles, load_grants, policy_document
from claude_bottle.guard_inputs.pipelock import pipelock_config, to_yaml
from claude_bottle.hostfs.paths import Roots, read_host_file
from claude_bottle.identity import AGENT_HOME, RuntimeIds
from claude_bottle.manifest import BottleSpec

__all__ = ["GUARD_PORT", "HONEY_FILES", "PIPELOCK_PORT", "GuardInputs", "prepare_guard", "rewrite_policy"]

GUARD_PORT = 3128
PIPELOCK_PORT = 8888
HONEY_FILES = (".aws/credentials", ".npmrc")  # under the agent's home


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


def secrets_document(creds: Sequence[Credential], honeytokens: Mapping[str, str]) -> dict[str, Any]:
    return {
        "routes": {
            c.name: {"upstream": c.upstream, "header": c.header, "value": c.value, "secret": c.secret} for c in creds
        },
        "honeytokens": sorted(honeytokens.values()),
    }


@dataclass(frozen=True)
class GuardInputs:
    """What a backend needs to run a bottle's guard and point its agent at it."""

    engine: str  # "guard" | "pipelock"
    port: int
    dir: Path  # mounted read-only into the guard: policy.json, secrets.json, ca.crt | pipelock.yaml
    audit: Path  # egress.jsonl, appended by the guard
    requests: Path = Path("/dev/null")  # requests.jsonl: capability requests, appended by the guard only
    agent_env: dict[str, str] = field(default_factory=dict)  # placeholders and route URLs (no secrets)
    honey: dict[str, Path] = field(default_factory=dict)  # agent home-relative path -> host file (read-only)
    cafile: bool = False  # dir holds ca.crt for upstream TLS

    @property
    def guard_url(self) -> str:
        return f"http://egress:{self.port}"

    def argv(self, *, listen: str, clients: str, guard_ip: str | None = None, dns_port: int = 53) -> list[str]:
        """The guard's command line in its container, on every backend: its files where the backend mounts
        them (`dir` at /etc/claude-bottle, `audit` and `requests` under /var/log/claude-bottle, the run dir
        at /bottle-run), listening on `listen` for `clients` only; with `guard_ip`, also the bottle's DNS."""
        argv = [
            "--policy", "/etc/claude-bottle/policy.json",
            "--secrets", "/etc/claude-bottle/secrets.json",
            "--audit", "/var/log/claude-bottle/egress.jsonl",
            "--listen", listen,
        ]  # fmt: skip
        if guard_ip:
            argv += ["--dns", f"{guard_ip}:{dns_port}", "--guard-ip", guard_ip]
        argv += [
            "--clients", clients,
            "--ready-file", "/bottle-run/guard-ready",
            "--requests", "/var/log/claude-bottle/requests.jsonl",
        ]  # fmt: skip
        if self.cafile:
            argv += ["--cafile", "/etc/claude-bottle/ca.crt"]
        return argv

    def agent_environment(
        self, spec_env: Mapping[str, str], *, slug: str, url: str | None = None, direct: str = "egress"
    ) -> dict[str, str]:
        """The agent's environment on every backend: the manifest's variables, the credential placeholders
        and route URLs, the guard (at `url`) as every proxy with `direct` (its own address) never sent
        through itself, the bottle's slug and the agent's home."""
        url = url or self.guard_url
        no_proxy = f"localhost,127.0.0.1,::1,{direct}"
        return {
            **spec_env,
            **self.agent_env_for(url),
            "HTTP_PROXY": url,
            "HTTPS_PROXY": url,
            "http_proxy": url,
            "https_proxy": url,
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
            "CLAUDE_BOTTLE_SLUG": slug,
            "BOTTLE_GUARD_URL": url,  # bottle-capability asks here
            "HOME": AGENT_HOME,
            # Claude Code keeps its settings (.claude.json) and transcripts here: the state dir on the host.
            "CLAUDE_CONFIG_DIR": f"{AGENT_HOME}/.claude",
        }

    def agent_env_for(self, guard_url: str) -> dict[str, str]:
        """The agent's environment for a bottle that reaches its guard at another URL (a microVM reaches it
        on a loopback address, with no name service)."""
        return {k: v.replace(self.guard_url, guard_url) for k, v in self.agent_env.items()}


def prepare_guard(
    state: StateDir,
    spec: BottleSpec,
    *,
    base: Path,
    roots: Roots,
    ca_certs: Path | None,
    ids: RuntimeIds,
    environ: Mapping[str, str],
) -> GuardInputs:
    """Write the guard's files for a bottle about to start, and hand each container user what it owns."""
    pipelock = spec.egress.engine == "pipelock"
    files = GuardFiles(state)
    files.dir.mkdir(mode=0o700, exist_ok=True)
    grants = load_grants(state)
    owned = [files.dir, state.audit_path]
    honey_paths: dict[str, Path] = {}
    agent_env: dict[str, str] = {}
    port = PIPELOCK_PORT if pipelock else GUARD_PORT
    if pipelock:
        cfg = files.dir / "pipelock.yaml"
        write_private(cfg, to_yaml(pipelock_config(spec, grants)) + "\n")
        owned.append(cfg)
    else:
        creds = resolve_credentials(spec, environ=environ, base=base, roots=roots)
        agent_env = agent_credential_env(creds, f"http://egress:{port}")
        tokens = make_honeytokens()
        honey_dir = state.path / "honey"
        honey_dir.mkdir(mode=0o700, exist_ok=True)
        for name, content in honeytoken_files(tokens).items():
            target = honey_dir / name.replace("/", "_")
            write_private(target, content)
            if ids.needs_helper:  # decoys the bottle user must read (the state dir around them stays 0700)
                target.chmod(0o644)
            honey_paths[name] = target
        allow = [r.rule() for r in spec.egress.allow]
        deny = [r.rule() for r in spec.egress.deny]
        files.write_policy(
            policy_document(state.slug, allow, deny, grants, guard_decisions(state), _ask(spec), *_git(spec))
        )
        files.write_secrets(secrets_document(creds, tokens))
        owned += [files.policy, files.secrets]
        if ca_certs is not None:
            write_private(files.dir / "ca.crt", read_host_file(ca_certs))
            owned.append(files.dir / "ca.crt")
    state.audit_path.touch(mode=0o600, exist_ok=True)
    requests = state.path / "requests.jsonl"
    requests.touch(mode=0o600, exist_ok=True)
    owned.append(requests)
    if os.getuid() == 0:
        # The containers run unprivileged: hand each exactly the paths it reads or writes.
        for p in owned:
            os.chown(p, ids.guard_uid, ids.guard_gid)
        for p in honey_paths.values():
            os.chown(p, ids.agent_uid, ids.agent_gid)
    return GuardInputs(
        engine="pipelock" if pipelock else "guard",
        port=port,
        dir=files.dir,
        audit=state.audit_path,
        requests=requests,
        agent_env=agent_env,
        honey=honey_paths,
        cafile=ca_certs is not None and not pipelock,
    )


def _git(spec: BottleSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    gh = spec.credentials.github
    return (gh.push_refs, gh.repos) if gh is not None else ((), ())


def _ask(spec: BottleSpec) -> float:
    return spec.egress.ask_timeout if spec.egress.ask else 0.0


def rewrite_policy(state: StateDir, spec: BottleSpec) -> None:
    """A running bottle's policy after a grant or revoke: the guard re-reads it within half a second."""
    files = GuardFiles(state)
    grants = load_grants(state)
    if spec.egress.engine == "pipelock":
        write_private(files.dir / "pipelock.yaml", to_yaml(pipelock_config(spec, grants)) + "\n")
    elif files.policy.exists():
        allow = [r.rule() for r in spec.egress.allow]
        deny = [r.rule() for r in spec.egress.deny]
        files.write_policy(
            policy_document(state.slug, allow, deny, grants, guard_decisions(state), _ask(spec), *_git(spec))
        )
