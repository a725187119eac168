"""Builds on the real engine (issue 14): a failed build leaves nothing behind, a certificate failure
names its fix on the first line."""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from claude_bottle.errors import BackendError
from claude_bottle.images import builder
from claude_bottle.images.specs import ImageSpec

from .conftest import docker


def leftovers(marker: str) -> list[str]:
    out = docker("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Command}}").stdout
    return [line.split()[0] for line in out.splitlines() if marker in line]


def test_a_failed_build_leaves_no_container_behind() -> None:
    marker = f"cbtest-build-{secrets.token_hex(4)}"
    spec = ImageSpec("agent", f"# test\nFROM debian:bookworm-slim\nRUN echo {marker} && false\n")
    try:
        with pytest.raises(BackendError, match=r"building the agent image failed \(exit 1\)"):
            builder.build(spec, lambda _line: None)
        assert leftovers(marker) == []
        # The control: the legacy builder without --force-rm does leave the failed step's container.
        ctx = f"FROM debian:bookworm-slim\nRUN echo {marker} && false\n"
        env = {**os.environ, "DOCKER_BUILDKIT": "0"}
        r = subprocess.run(["docker", "build", "-"], input=ctx, text=True, capture_output=True, env=env, check=False)
        assert r.returncode != 0 and len(leftovers(marker)) == 1
    finally:
        for cid in leftovers(marker):
            docker("rm", "-f", cid, check=False)


def test_a_certificate_failure_says_the_fix_first() -> None:
    marker = f"cbtest-cert-{secrets.token_hex(4)}"
    spec = ImageSpec(
        "agent",
        f"# test\nFROM debian:bookworm-slim\nRUN echo {marker} 'npm error code SELF_SIGNED_CERT_IN_CHAIN' && false\n",
    )
    try:
        with pytest.raises(BackendError) as exc:
            builder.build(spec, lambda _line: None)
        first = str(exc.value).splitlines()[0]
        assert "a TLS certificate was not trusted" in first and "ca_certs" in first and "host_ca" in first
    finally:
        for cid in leftovers(marker):
            docker("rm", "-f", cid, check=False)
