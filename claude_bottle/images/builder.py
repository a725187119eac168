"""The backend-neutral image builder: a bottle's agent and guard images, built with the engine that builds
them (the Docker engine, local or a context's), and handed on as a backend needs them: by tag on that
engine (Docker), as a `docker save` archive cached per image id (a microVM), or pushed to a registry a
cluster pulls from (Kubernetes). No backend builds images itself, and none imports another to get them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from claude_bottle import engine
from claude_bottle.bottle.state import bottle_home, write_private
from claude_bottle.errors import BackendError
from claude_bottle.images.specs import ImageSpec, agent_image_spec, build_dir, guard_image_spec

if TYPE_CHECKING:
    from claude_bottle.bottle import Bottle

__all__ = ["CERT_ERRORS", "archive", "build_failure", "prepare", "push"]

Progress = Callable[[str], None]
ARCHIVES_KEPT = 3  # `docker save` archives kept per cache folder (each a few hundred MB)

# What npm, pip, curl, git and apt print when a TLS-inspecting network's certificate is not trusted.
CERT_ERRORS = (
    "SELF_SIGNED_CERT_IN_CHAIN",
    "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
    "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
    "CERTIFICATE_VERIFY_FAILED",
    "certificate verify failed",
    "self-signed certificate in certificate chain",
    "unable to get local issuer certificate",
    "server certificate verification failed",
)


def build_failure(role: str, code: int, output: str) -> str:
    """The build's failure: its cause and fix on the first line when it is a certificate problem."""
    tail = "\n".join(output.strip().splitlines()[-20:])
    if any(marker in output for marker in CERT_ERRORS):
        return (
            f"building the {role} image failed: a TLS certificate was not trusted (a TLS-inspecting network?): "
            "set bottles.<name>.ca_certs to the CA bundle that network uses, or leave host_ca on to trust "
            f"this host's\nlast output:\n{tail}"
        )
    return f"building the {role} image failed (exit {code}); last output:\n{tail}"


def specs_of(bottle: Bottle) -> list[ImageSpec]:
    return [
        guard_image_spec(),
        agent_image_spec(bottle.spec, bottle.ids, ca_certs=bottle.paths.ca_certs, granted=bottle.granted),
    ]


def prepare(
    bottle: Bottle,
    progress: Progress,
    *,
    ctx: engine.Context | None = None,
    before_build: Callable[[], None] | None = None,
) -> dict[str, str]:
    """The bottle's images by role (guard, agent), as tags on the current engine. Warm, this is one engine
    call: the base images' ids are remembered (per engine), so the content-addressed tags can be asked about
    together with the bases; a base that changed since costs a second call (and a build). `before_build`
    runs once before any build (minutes of it): a backend checks there what it needs to run them."""
    specs = specs_of(bottle)
    suffix = "" if ctx is None or ctx.local else "-" + hashlib.sha256(ctx.endpoint.encode()).hexdigest()[:12]
    cache = bottle_home() / "cache" / f"base-images{suffix}.json"
    try:
        known: dict[str, str] = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    base_names = sorted({s.base for s in specs})
    guessed = [dataclasses.replace(s, base_id=known.get(s.base, "")) for s in specs]
    found = engine.image_ids([*base_names, *(s.tag for s in guessed)])
    bases = {b: found[b] for b in base_names if b in found}
    for base in sorted(set(base_names) - set(bases)):
        if not engine.docker("pull", "-q", base, timeout=600).ok:
            raise BackendError(
                f"base image {base} is not present and cannot be pulled: run ./scripts/setup "
                "(it builds it from Debian packages) or set base_image to an image you have"
            )
        bases.update(engine.image_ids([base]))
    specs = [dataclasses.replace(s, base_id=bases[s.base]) for s in specs]
    if bases != {b: known.get(b) for b in bases}:
        found = engine.image_ids([s.tag for s in specs])
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(cache, json.dumps({**known, **bases}) + "\n")
    if before_build is not None and any(s.tag not in found for s in specs):
        before_build()
    images = {}
    for spec in specs:
        if spec.tag not in found:
            build(spec, progress)
        images[spec.role] = spec.tag
        if spec.role == "agent":
            granted = "; ".join(f"{k}: {' '.join(v)}" for k, v in sorted(bottle.granted.items()) if v)
            note = f"# rebuilt: granted packages ({granted}), built in the last layer\n" if granted else ""
            write_private(bottle.state.path / "Dockerfile", note + spec.dockerfile)
    return images


def build(spec: ImageSpec, progress: Progress) -> None:
    progress(f"building {spec.role} image {spec.tag}")
    with build_dir() as tmp:
        spec.write_context(Path(tmp))
        # --force-rm: the legacy builder otherwise leaves a failed step's container behind, one per failure.
        result = engine.streaming(
            ["build", "--force-rm", "--label", f"claude-bottle.image={spec.role}", "-t", spec.tag, tmp],
            lambda line: progress(line) if line.startswith(("Step ", "Successfully")) else None,
            env={"DOCKER_BUILDKIT": "0"},
        )
    if not result.ok:
        raise BackendError(build_failure(spec.role, result.returncode, result.stderr))


def archive(tag: str, progress: Progress, *, folder: str) -> Path:
    """An image as a `docker save` archive in the cache (`folder` names the backend's), once per image id:
    a new build, a new archive; the last ARCHIVES_KEPT are kept."""
    ids = engine.image_ids([tag])
    if tag not in ids:
        raise BackendError(f"image {tag} vanished after it was built: run start again")
    image_id = ids[tag].removeprefix("sha256:")[:32]
    cache = bottle_home() / "cache" / folder
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = cache / f"{image_id}.tar"
    if out.is_file():
        os.utime(out)
        return out
    progress(f"exporting {tag} for the microVM")
    partial = cache / f".{image_id}.tar.partial"
    engine.check(engine.docker("save", "-o", str(partial), tag, timeout=900), f"docker save {tag}")
    partial.rename(out)
    for old in sorted(cache.glob("*.tar"), key=lambda p: p.stat().st_mtime)[:-ARCHIVES_KEPT]:
        old.unlink(missing_ok=True)
    return out


def push(images: dict[str, str], registry: str, progress: Progress) -> dict[str, str]:
    """Each image tagged into `registry` and pushed; the pushed names by role."""
    pushed = {}
    for role, image in images.items():
        remote = f"{registry.rstrip('/')}/{image.rsplit('/', 1)[-1]}"
        progress(f"pushing {remote}")
        for args in (("tag", image, remote), ("push", "-q", remote)):
            engine.check(engine.docker(*args, timeout=1800), f"docker {args[0]} {remote}")
        pushed[role] = remote
    return pushed
