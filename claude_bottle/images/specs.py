"""Agent and guard images: rendered build contexts, content-addressed tags, builds with progress."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template

from claude_bottle import guard
from claude_bottle.bottle.claude_code import resolve_version
from claude_bottle.errors import BottleError
from claude_bottle.hostfs.paths import read_host_file
from claude_bottle.identity import RuntimeIds
from claude_bottle.manifest import BottleSpec

__all__ = ["GUARD_BASE_IMAGE", "ImageSpec", "agent_image_spec", "guard_image_spec"]

GUARD_BASE_IMAGE = "python:3.11-slim-bookworm"
CA_NAME = "claude-bottle-extra-ca.crt"
SCRIPTS = (
    "bottle-wait-guard",
    "bottle-firewall",
    "bottle-run",
    "bottle-install",
    "bottle-capability",
)  # into the agent image


def _template(name: str) -> str:
    return resources.files("claude_bottle.images").joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class ImageSpec:
    role: str
    dockerfile: str
    files: dict[str, bytes] = field(default_factory=dict)
    base_id: str = ""  # the base image's id: a rebuilt base means a rebuilt image

    @property
    def base(self) -> str:
        return self.dockerfile.split("\nFROM ", 1)[1].split()[0]

    @property
    def tag(self) -> str:
        h = hashlib.sha256(self.dockerfile.encode() + b"\0" + self.base_id.encode())
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + self.files[name] + b"\0")
        return f"claude-bottle-{self.role}:{h.hexdigest()[:16]}"

    def write_context(self, directory: Path) -> None:
        (directory / "Dockerfile").write_text(self.dockerfile, encoding="utf-8")
        for name, data in self.files.items():
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            if name in SCRIPTS:
                target.chmod(0o755)


def agent_image_spec(
    bottle: BottleSpec,
    ids: RuntimeIds,
    *,
    ca_certs: Path | None = None,
    granted: Mapping[str, Sequence[str]] | None = None,
) -> ImageSpec:
    """The agent image for a bottle. `ca_certs` is the bundle's checked, resolved path (paths.py);
    `granted`, the packages capability requests were granted (a last layer of their own)."""
    images = resources.files("claude_bottle.images")
    files = {name: images.joinpath(name).read_bytes() for name in SCRIPTS}
    ca_copy = ca_update = ca_env = ""
    if ca_certs is not None:
        ca_path = ca_certs
        try:
            files[CA_NAME] = read_host_file(ca_path)
        except OSError as exc:
            raise BottleError(f"ca_certs {ca_path} cannot be read ({exc.strerror}): fix bottles.*.ca_certs") from None
        if b"-----BEGIN CERTIFICATE-----" not in files[CA_NAME]:
            raise BottleError(f"ca_certs {ca_path} holds no PEM certificate: point it at a CA bundle (.crt/.pem)")
        ca_copy = f"COPY {CA_NAME} /usr/local/share/ca-certificates/{CA_NAME}"
        ca_update = "update-ca-certificates >/dev/null && "
        ca_env = (
            f"ENV NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/{CA_NAME} "
            "PIP_CERT=/etc/ssl/certs/ca-certificates.crt"
        )
    # The manifest's packages travel as data, one per line, never inside a RUN line (bottle-install).
    for kind, names in (("apt", bottle.packages), ("npm", bottle.npm), ("pip", bottle.pip)):
        files[f"packages/{kind}.txt"] = "".join(f"{n}\n" for n in names).encode()
    extra = {k: list(v) for k, v in (granted or {}).items()}
    if extra.get("pip") and not bottle.pip and "python3-pip" not in extra.get("apt", []):
        extra.setdefault("apt", []).append("python3-pip")
    for kind in ("apt", "npm", "pip"):
        files[f"packages/granted/{kind}.txt"] = "".join(f"{n}\n" for n in extra.get(kind, [])).encode()
    dockerfile = Template(_template("agent.Dockerfile")).substitute(
        base_image=bottle.base_image,
        ca_copy=ca_copy,
        ca_update=ca_update,
        ca_env=ca_env,
        pip_apt=" python3-pip" if bottle.pip else "",
        claude_code_version=resolve_version(bottle.claude_code_version),
        user_setup=_user_setup(ids.agent_uid, ids.agent_gid),
        uid=ids.agent_uid,
        gid=ids.agent_gid,
    )
    return ImageSpec("agent", dockerfile, files)


def _user_setup(uid: int, gid: int) -> str:
    """The agent's user. uid 0 (root runs the CLI on a root-owned workspace) gets no account of its own:
    it runs without capabilities, and its home is /home/claude like everyone's."""
    dirs = "mkdir -p /workspace /home/claude/.claude"
    if uid == 0:
        return dirs
    return (
        f"(getent group {gid} >/dev/null || groupadd -g {gid} claude) \\\n"
        f" && useradd -m -u {uid} -g {gid} -s /bin/bash claude \\\n"
        f" && {dirs} && chown {uid}:{gid} /workspace /home/claude/.claude"
    )


def guard_image_spec() -> ImageSpec:
    pkg = Path(guard.__file__).parent
    files = {"claude_bottle/__init__.py": b'"""claude-bottle (guard image: the guard package only)."""\n'}
    for src in sorted(pkg.glob("*.py")):
        files[f"claude_bottle/guard/{src.name}"] = src.read_bytes()
    dockerfile = Template(_template("guard.Dockerfile")).substitute(guard_base_image=GUARD_BASE_IMAGE)
    return ImageSpec("guard", dockerfile, files)


def build_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="claude-bottle-build-")
