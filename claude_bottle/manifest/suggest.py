"""An allowlist from the project (issue 15, item 4): the registry hosts a workspace's package manifests and
lockfiles need, each with the file that asked for it. Read-only, bounded, no network: only file names and
the URLs written in them (registries, index URLs, `resolved` and `source` URLs, git dependencies).

Ecosystems: npm/pnpm/yarn, pip requirements, pyproject (PEP 621, uv, Poetry), Pipfile, Cargo, Go modules,
Bundler. A host is proposed once, named by the first file that asked for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["Suggestion", "suggest", "toml_lines"]

MAX_BYTES = 4 * 1024 * 1024  # a lockfile larger than this is read in part
SKIP_DIRS = {".git", "node_modules", ".venv", "venv", "target", "__pycache__", "vendor", "dist", "build"}
MAX_DEPTH = 3

DEFAULTS: dict[str, tuple[str, ...]] = {
    "npm": ("registry.npmjs.org",),
    "pip": ("pypi.org", "files.pythonhosted.org"),
    "cargo": ("index.crates.io", "static.crates.io", "crates.io"),
    "go": ("proxy.golang.org", "sum.golang.org"),
    "gem": ("rubygems.org", "index.rubygems.org"),
}

FILES: dict[str, str] = {
    "package.json": "npm",
    "package-lock.json": "npm",
    "npm-shrinkwrap.json": "npm",
    "pnpm-lock.yaml": "npm",
    "yarn.lock": "npm",
    ".npmrc": "npm",
    ".yarnrc.yml": "npm",
    "pyproject.toml": "pip",
    "uv.lock": "pip",
    "poetry.lock": "pip",
    "Pipfile": "pip",
    "Pipfile.lock": "pip",
    "setup.py": "pip",
    "setup.cfg": "pip",
    "Cargo.toml": "cargo",
    "Cargo.lock": "cargo",
    "go.mod": "go",
    "go.sum": "go",
    "Gemfile": "gem",
    "Gemfile.lock": "gem",
}
_REQUIREMENTS = re.compile(r"requirements.*\.(txt|in)$")
_URL = re.compile(r"""(?:git\+)?(?:https?|ssh|git)://[^\s"'<>\\)\],;]+""")
_SCP_GIT = re.compile(r"""\bgit@([A-Za-z0-9.-]+):""")  # git@github.com:owner/repo
_SHORTHAND = {"github:": "github.com", "gitlab:": "gitlab.com", "bitbucket:": "bitbucket.org"}
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9][A-Za-z0-9-]{0,62})+")


@dataclass(frozen=True)
class Suggestion:
    host: str
    source: str  # the workspace-relative file that asked for it
    why: str  # "registry" | "index" | "git dependency" | "download"


def _files(workspace: Path) -> Iterable[Path]:
    stack = [(workspace, 0)]
    while stack:
        d, depth = stack.pop()
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        for p in entries:
            if p.is_symlink():
                continue
            if p.is_dir():
                if depth < MAX_DEPTH and p.name not in SKIP_DIRS:
                    stack.append((p, depth + 1))
            elif p.name in FILES or _REQUIREMENTS.fullmatch(p.name):
                yield p


def _read(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return f.read(MAX_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""


def _host(url: str) -> str | None:
    try:
        host = urlsplit(url.removeprefix("git+")).hostname
    except ValueError:
        return None
    if host and _HOST.fullmatch(host) and host not in ("localhost",):
        return host.lower()
    return None


def _hosts_in(text: str) -> Iterable[tuple[str, str]]:
    """(host, why) for each URL, scp-style git remote and hosting shorthand in a file."""
    for m in _URL.finditer(text):
        url = m.group(0)
        host = _host(url)
        if host:
            git = url.startswith(("git+", "git://", "ssh://")) or url.endswith(".git") or "#" in url
            yield host, "git dependency" if git else "download"
    for m in _SCP_GIT.finditer(text):
        if _HOST.fullmatch(m.group(1)):
            yield m.group(1).lower(), "git dependency"
    for prefix, host in _SHORTHAND.items():
        if re.search(r"""["'\s]""" + re.escape(prefix) + r"[A-Za-z0-9]", text):
            yield host, "git dependency"


def suggest(workspace: Path) -> list[Suggestion]:
    found: dict[str, Suggestion] = {}

    def add(host: str, source: Path, why: str) -> None:
        if host not in found:
            found[host] = Suggestion(host, str(source.relative_to(workspace)), why)

    for path in _files(workspace):
        kind = "pip" if _REQUIREMENTS.fullmatch(path.name) else FILES[path.name]
        text = _read(path)
        if kind == "go" and path.name == "go.mod":
            # Modules come through the Go proxy and its checksum database, whatever their paths say.
            for host in DEFAULTS["go"]:
                add(host, path, "registry")
            continue
        if kind == "go":
            continue
        for host in DEFAULTS[kind]:
            add(host, path, "registry")
        indexes = kind == "pip" and re.search(r"--(extra-)?index-url|index-url\s*=|\[\[tool\.(uv|poetry)\.", text)
        for host, why in _hosts_in(text):
            add(host, path, "index" if indexes and why == "download" else why)
    return sorted(found.values(), key=lambda s: (s.source, s.host))


def toml_lines(suggestions: Iterable[Suggestion], *, allowed: Iterable[str] = ()) -> list[str]:
    """Allow-list entries for a manifest, each with the file that asked for it; hosts already allowed
    (exactly, or by a `*.suffix` rule) are left out."""
    rules = list(allowed)
    out = []
    for s in suggestions:
        if any(r == s.host or (r.startswith("*.") and s.host.endswith(r[1:])) for r in rules):
            continue
        out.append(f'  "{s.host}",{" " * max(1, 28 - len(s.host))}# {s.why}: {s.source}')
    return out
