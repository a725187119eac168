"""claude-bottle.toml: discovery, parsing into typed models, and one-line errors with key paths."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from claude_bottle.errors import ManifestError
from claude_bottle.guard.policy import DEFAULT_PORTS, Rule, normalise_host

__all__ = [
    "MANIFEST_NAME",
    "STARTER_MANIFEST",
    "AgentSpec",
    "BottleSpec",
    "EgressRule",
    "EgressSpec",
    "Manifest",
    "find_manifest",
    "load_manifest",
    "parse_manifest",
    "starter_manifest",
]

MANIFEST_NAME = "claude-bottle.toml"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,29}$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _valid_pattern(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    name = host[2:] if host.startswith("*.") else host
    labels = name.split(".")
    return bool(name) and all(_LABEL_RE.match(label) for label in labels)


class _Strict(BaseModel):
    """Unknown keys are errors that name the key and list the valid ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                valid = ", ".join(sorted(cls.model_fields))
                raise ValueError(f"unknown key {unknown[0]!r} (valid keys: {valid})")
        return data


class EgressRule(_Strict):
    host: str = Field(description="host name, *.suffix wildcard, or IP literal")
    ports: tuple[int, ...] = DEFAULT_PORTS
    private: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            host, port = data, None
            if data.startswith("["):  # [v6]:port
                end = data.find("]")
                host, rest = data[: end + 1], data[end + 1 :]
                port = rest[1:] if rest.startswith(":") else None
            elif data.count(":") == 1:
                host, port = data.split(":")
            if port is not None:
                if not port.isdigit():
                    raise ValueError(f'{data!r}: port must be a number, like "host:8080"')
                return {"host": host, "ports": (int(port),)}
            return {"host": host}
        return data

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        h = normalise_host(v)
        if not _valid_pattern(h):
            raise ValueError(f'{v!r} is not a host pattern: expected "api.example.com", "*.example.com" or an IP')
        return h

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(not 0 < p < 65536 for p in v):
            raise ValueError("ports must be a non-empty list of numbers from 1 to 65535")
        return v

    def label(self) -> str:
        return self.rule().label()

    def rule(self) -> Rule:
        """The guard's own rule type: the one that is written to its policy file."""
        return Rule(self.host, self.ports, self.private)


class EgressSpec(_Strict):
    engine: Literal["guard", "pipelock"] = "guard"
    allow: tuple[EgressRule, ...] = ()
    deny: tuple[EgressRule, ...] = ()
    networks: tuple[str, ...] = ()
    # Ask mode: a connection the policy refuses becomes a request to the operator, held while they decide.
    ask: bool = False
    ask_timeout: float = Field(60.0, gt=0, le=600)

    @field_validator("networks")
    @classmethod
    def _networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for n in v:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", n):
                raise ValueError(f"{n!r} is not a Docker network name")
        return v


class CredentialSpec(_Strict):
    """Where a credential comes from on the host, and where its route forwards to."""

    source: str | None = None  # "env:VAR" or "file:PATH"; default depends on the credential
    upstream: str | None = None  # base URL; default depends on the credential
    kind: Literal["api-key", "oauth"] | None = None  # Anthropic only; default from the source
    # GitHub only: refs a push may update beyond refs/heads/claude-bottle/<slug> (fnmatch; "delete:PATTERN"
    # allows deleting), and the repositories (owner/name) pushes may go to (empty: any).
    push_refs: tuple[str, ...] = ()
    repos: tuple[str, ...] = ()

    @field_validator("source")
    @classmethod
    def _source(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"env:[A-Za-z_][A-Za-z0-9_]*|file:.+", v):
            raise ValueError(f'{v!r}: expected "env:VARIABLE" or "file:PATH"')
        return v

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[^\s?#]*)?", v):
            raise ValueError(f'{v!r}: expected an http(s) base URL like "https://api.anthropic.com"')
        return v


class Credentials(_Strict):
    anthropic: CredentialSpec | None = None
    github: CredentialSpec | None = None


class Mount(_Strict):
    host: str
    guest: str
    mode: Literal["ro", "rw"] = "ro"

    @field_validator("guest")
    @classmethod
    def _guest(cls, v: str) -> str:
        if not v.startswith("/") or ":" in v or ".." in v.split("/"):
            raise ValueError(f"{v!r}: guest path must be absolute, without ':' or '..'")
        return v


_PACKAGE_RES = {
    # Debian: name[:arch][=version] or name/release
    "packages": re.compile(r"[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+|/[a-z0-9-]+)?"),
    # PyPI (PEP 508, no URLs or markers): name[extras] then version specifiers, e.g. "requests[socks]>=2,<3"
    "pip": re.compile(
        r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?(\[[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*\])?"
        r"( ?(===|==|!=|<=|>=|~=|<|>) ?[A-Za-z0-9.*+!_-]+( ?, ?(===|==|!=|<=|>=|~=|<|>) ?[A-Za-z0-9.*+!_-]+)*)?"
    ),
    # npm: [@scope/]name[@version-or-range], e.g. "typescript@^5.4" or "@types/node@>=20 <21"
    "npm": re.compile(r"(@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*(@[A-Za-z0-9.^~<>=|* x+-]+)?"),
}
_PACKAGE_HELP = {
    "packages": "a Debian package (name, name=version or name/release)",
    "pip": 'a PyPI requirement (name, name[extra], with specifiers like ">=2,<3")',
    "npm": "an npm package (name or @scope/name, optionally @version-or-range)",
}


class Resources(_Strict):
    cpus: float = Field(2.0, gt=0, le=256)
    memory: str = Field("4g", pattern=r"^[0-9]+[kmg]?$")
    pids: int = Field(1024, ge=16, le=1_000_000)


class BottleSpec(_Strict):
    base_image: str = "debian:bookworm-slim"
    packages: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()
    npm: tuple[str, ...] = ()
    ca_certs: str | None = None
    host_ca: bool = True  # without ca_certs: the host's CA bundle (paths.HOST_CA_BUNDLES) in builds and the guard
    claude_code_version: str = Field("latest", pattern=r"^(latest|stable|[0-9]+\.[0-9]+\.[0-9]+)$")
    env: dict[str, str] = Field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    resources: Resources = Field(default_factory=Resources)
    egress: EgressSpec = Field(default_factory=EgressSpec)
    credentials: Credentials = Field(default_factory=Credentials)
    backend: str | None = None
    # container: the agent shares the host's kernel (runc). gvisor: the agent runs under gVisor's user-space
    # kernel (runsc), the guard and the network fence as they are (docs/design/isolation.md).
    isolation: Literal["container", "gvisor"] = "container"
    # Kubernetes: the RuntimeClass an isolation = "gvisor" Pod names (the cluster's gVisor handler).
    runtime_class: str = Field("gvisor", pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
    # The Docker context a new bottle runs on (`docker context ls`; else DOCKER_HOST, then the current one).
    context: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

    @field_validator("packages", "pip", "npm")
    @classmethod
    def _package_names(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        # Each reaches its package tool as one argument (never a shell: images/bottle-install), so a
        # version specifier is fine; what each tool would read as an option or a URL is not.
        kind = str(info.field_name)
        for p in v:
            if not _PACKAGE_RES[kind].fullmatch(p):
                raise ValueError(f"{p!r} is not {_PACKAGE_HELP[kind]}")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                raise ValueError(f"{k!r} is not an environment variable name")
        return v

    @field_validator("base_image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]*", v):
            raise ValueError(f"{v!r} is not an image reference")
        return v


class Port(_Strict):
    """One of the agent's ports published on the host (`ports = [3000, {guest = 5173, host = 15173}]`): on the
    host's loopback only; `host` defaults to the guest's number."""

    guest: int = Field(ge=1, le=65535)
    host: int | None = Field(None, ge=1, le=65535)

    @property
    def host_port(self) -> int:
        return self.host or self.guest


class AgentSpec(_Strict):
    bottle: str = "default"
    workspace: str | None = None
    # auto (the default): worktree for the top level of a git repository with a commit, else copy.
    # worktree: a checkout of its own on claude-bottle/<slug>; copy: a copy of the files, `apply` brings
    # them home; both owned by the bottle user, never by you. mount: the agent edits your files directly
    # (git, an editor or a shell prompt run there may run what it writes: docs/design/operator-tools.md).
    workspace_mode: Literal["auto", "worktree", "copy", "mount"] = "auto"
    prompt: str | None = None
    model: str | None = None
    claude_args: tuple[str, ...] = ()
    append_system_prompt: str | None = None
    # The bottle is the boundary, so by default claude skips its own permission prompts inside it.
    permission_mode: Literal["bypassPermissions", "acceptEdits", "default", "plan", "auto", "manual"] = (
        "bypassPermissions"
    )
    # The agent's ports (a dev server's) published on the host's loopback while the bottle runs.
    ports: tuple[Port, ...] = ()

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            return [{"guest": p} if isinstance(p, int) and not isinstance(p, bool) else p for p in v]
        return v

    @field_validator("ports")
    @classmethod
    def _distinct_ports(cls, v: tuple[Port, ...]) -> tuple[Port, ...]:
        for what, seen in (("guest", [p.guest for p in v]), ("host", [p.host_port for p in v])):
            twice = sorted({n for n in seen if seen.count(n) > 1})
            if twice:
                raise ValueError(f"{what} port {twice[0]} is named twice")
        return v


class Manifest(_Strict):
    bottles: dict[str, BottleSpec] = Field(default_factory=dict)
    agents: dict[str, AgentSpec] = Field(default_factory=dict)
    _path: Path | None = PrivateAttr(None)

    @field_validator("bottles", "agents")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid name: use a-z, 0-9 and '-', at most 30 characters")
        return v

    @model_validator(mode="after")
    def _references(self) -> Manifest:
        for name, agent in self.agents.items():
            if agent.bottle not in self.bottles:
                defined = ", ".join(sorted(self.bottles)) or "none"
                raise ValueError(f"agents.{name}.bottle: no bottle named {agent.bottle!r} (defined: {defined})")
        return self

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def directory(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def agent(self, name: str) -> AgentSpec:
        if name not in self.agents:
            defined = ", ".join(sorted(self.agents)) or "none"
            raise ManifestError(f"{self.path}: no agent named {name!r} (defined: {defined})")
        return self.agents[name]

    def workspace(self, name: str) -> Path:
        """The agent's workspace as written (absolute, links not yet resolved: paths.check_path does that,
        refusing links an agent may have planted)."""
        ws = self.agent(name).workspace
        base = self.directory
        return base / Path(ws).expanduser() if ws else base


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in first["loc"]).replace(".[", "[")
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        msg = "required key is missing"
    elif first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = len(err.errors()) - 1
    where = f"{loc}: " if loc else ""
    return f"{source}: {where}{msg}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def parse_manifest(text: str, *, path: Path | None = None) -> Manifest:
    source = str(path) if path else "<manifest>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{source}: not valid TOML: {exc}") from None
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(_format_error(source, exc)) from None
    manifest._path = path
    return manifest


def find_manifest(start: Path | None = None, *, home: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        candidate = d / MANIFEST_NAME
        if candidate.is_file():
            return candidate
    if home is not None and (home / "manifest.toml").is_file():
        return home / "manifest.toml"
    raise ManifestError(
        f"no {MANIFEST_NAME} in {here} or its parents"
        + (f" (nor {home / 'manifest.toml'})" if home else "")
        + ": run `claude-bottle init` to write a starter one, or pass --manifest PATH"
    )


def load_manifest(path: Path) -> Manifest:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file: check --manifest or run `claude-bottle init`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read it: {exc}") from None
    return parse_manifest(text, path=path.resolve())


STARTER_MANIFEST = """\
# claude-bottle manifest: what the box is (bottles) and who runs in it (agents).
# Reference: README.md "Manifest". Unknown keys are errors, so typos do not pass silently.

[bottles.default]
# Image the agent image is built on. Claude Code, curl, git and python3 are added to it.
base_image = "debian:bookworm-slim"
# Extra tools baked into the image:
packages = []          # Debian packages, e.g. ["ripgrep", "jq"]
pip = []               # e.g. ["requests"]
npm = []               # e.g. ["typescript"]
claude_code_version = "latest"   # or a pinned "2.1.3"
# Builds and the guard trust this host's CA bundle (a TLS-inspecting network needs it):
# host_ca = false stops that; ca_certs = "/path/to/bundle.crt" names another bundle instead.
# Environment for the agent (no secrets: credentials are held by the guard).
env = {}

# The agent under gVisor's user-space kernel (runsc, which ./scripts/setup registers): a kernel bug reachable
# from its system calls is then gVisor's, not the host's. Default "container" (the host's kernel).
# isolation = "gvisor"

[bottles.default.resources]
cpus = 2
memory = "4g"
pids = 1024

[bottles.default.egress]
# The agent's only way out is the egress guard; everything not allowed here is refused and logged.
# A rule is "host", "*.suffix", "host:port", or a table { host = "...", ports = [443], private = true }
# (private = true lets that name resolve to a private address, e.g. a service on your LAN).
allow = [
  "api.anthropic.com",
]
deny = []
# Attach the guard's outbound side to existing Docker networks instead of a per-bottle one:
# networks = ["my-services"]

[agents.claude]
bottle = "default"
# workspace = "."      # the host directory the agent works on (default: this file's directory)
# The agent works in a tree of its own (owned by the bottle user, so git on your host never runs what it
# writes): "worktree" (a git checkout on branch claude-bottle/<slug>; `merge` brings it home) for the top level
# of a git repository, else "copy" (`apply` brings it home). "mount" lets it edit your files directly; then a
# git prompt, an editor or git itself run in them while it runs may run its code.
# workspace_mode = "auto"
# model = "claude-sonnet-4-5"
# prompt = "..."       # set to run headless; leave unset for an interactive session
claude_args = []
"""


def starter_manifest() -> str:
    return STARTER_MANIFEST
