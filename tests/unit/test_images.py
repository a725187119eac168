"""What goes into the agent image (issue 10): packages, pip, npm, base image, CA bundle, and Claude Code's
"latest" resolved against a registry (a local one here) so a newer release means a new image."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.bottle import claude_code
from claude_bottle.errors import BottleError
from claude_bottle.identity import RuntimeIds
from claude_bottle.images.specs import CA_NAME, agent_image_spec, guard_image_spec
from claude_bottle.manifest import parse_manifest

IDS = RuntimeIds(1000, 1000, 10001, 10001)


def spec(extra: str = "", ca: Path | None = None) -> Any:
    b = parse_manifest(f'[bottles.default]\nclaude_code_version = "2.1.3"\n{extra}\n[agents.claude]\n').bottles[
        "default"
    ]
    return agent_image_spec(b, IDS, ca_certs=ca)


def test_packages_pip_npm_and_base_image_are_baked_in() -> None:
    s = spec(
        'base_image = "debian:trixie-slim"\npackages = ["jq", "ripgrep"]\npip = ["requests"]\nnpm = ["typescript"]'
    )
    df = s.dockerfile
    assert "\nFROM debian:trixie-slim\n" in df and s.base == "debian:trixie-slim"
    assert "iptables tmux python3-pip \\\n && bottle-install apt /tmp/bottle-packages/apt.txt" in df
    assert (s.files["packages/apt.txt"], s.files["packages/pip.txt"]) == (b"jq\nripgrep\n", b"requests\n")
    assert s.files["packages/npm.txt"] == b"typescript\n"
    assert "@anthropic-ai/claude-code@2.1.3 \\\n && bottle-install npm" in df
    assert "ripgrep" not in df and "requests" not in df and "typescript" not in df  # data, not Dockerfile text
    assert "useradd -m -u 1000 -g 1000" in df
    plain = spec()
    assert plain.tag != s.tag and "python3-pip" not in plain.dockerfile
    assert plain.files["packages/pip.txt"] == b""
    root = agent_image_spec(
        parse_manifest("[bottles.default]\n[agents.c]\n").bottles["default"], RuntimeIds(0, 0, 1, 1)
    )
    assert "useradd" not in root.dockerfile and "RUN mkdir -p /workspace /home/claude/.claude\n" in root.dockerfile
    assert "\nUSER 0:0\n" in root.dockerfile


def test_the_image_speaks_utf8_and_its_tmux_looks_like_a_terminal() -> None:
    df = spec().dockerfile
    assert "ENV LANG=C.UTF-8" in df and "LC_ALL=C.UTF-8" in df
    for line in ("set -g focus-events on", 'set -g default-terminal "tmux-256color"', 'terminal-features ",*:RGB"'):
        assert line in df


def test_bottle_install_passes_each_package_as_one_argument(tmp_path: Path) -> None:
    """What the manifest says is data: a specifier with shell characters reaches pip as one argv element,
    and nothing runs or is redirected."""
    import os
    import subprocess
    import sys

    from claude_bottle.images.specs import SCRIPTS

    assert "bottle-install" in SCRIPTS
    script = Path(__file__).parents[2] / "claude_bottle" / "images" / "bottle-install"
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("pip", "npm", "apt-get"):
        (fake / tool).write_text(f"#!{sys.executable}\nimport sys, json\nprint(json.dumps(sys.argv[1:]))\n")
        (fake / tool).chmod(0o755)
    listing = tmp_path / "pip.txt"
    listing.write_text("requests>=2,<3\nDjango == 4.2\n$(touch pwned)\n")
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    out = subprocess.run(
        ["bash", str(script), "pip", str(listing)], env=env, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[-3:] == ["requests>=2,<3", "Django == 4.2", "$(touch pwned)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "pip.txt"]  # no "=2" file, no "pwned"
    (tmp_path / "empty.txt").write_text("")
    out = subprocess.run(
        ["bash", str(script), "npm", str(tmp_path / "empty.txt")], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and out.stdout == ""  # nothing listed: the tool is not even run


def test_a_ca_bundle_is_copied_trusted_and_given_to_node(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    s = spec(ca=ca)
    assert s.files[CA_NAME] == ca.read_bytes()
    assert f"COPY {CA_NAME} /usr/local/share/ca-certificates/{CA_NAME}" in s.dockerfile
    assert "update-ca-certificates" in s.dockerfile and "NODE_EXTRA_CA_CERTS" in s.dockerfile
    ca.write_text("not a certificate")
    with pytest.raises(BottleError, match="holds no PEM certificate"):
        spec(ca=ca)


def test_tags_follow_content_and_the_base_image_id() -> None:
    import dataclasses

    s = spec()
    assert s.tag.startswith("claude-bottle-agent:") and spec().tag == s.tag
    assert dataclasses.replace(s, base_id="sha256:other").tag != s.tag
    assert guard_image_spec().tag.startswith("claude-bottle-guard:")


# -- "latest" resolved ---------------------------------------------------------------------------------
@pytest.fixture
def registry() -> Iterator[tuple[str, dict[str, Any]]]:
    """A local npm registry answering /@anthropic-ai/claude-code/<tag> from `answers` (tag -> version)."""
    answers: dict[str, Any] = {"latest": "2.9.9", "hits": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def do_GET(self) -> None:
            answers["hits"] += 1
            tag = self.path.rsplit("/", 1)[-1]
            body = json.dumps({"version": answers.get(tag, "")}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answers
    finally:
        server.shutdown()
        server.server_close()


def test_latest_is_resolved_cached_and_refreshed(
    registry: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, answers = registry
    monkeypatch.setenv("npm_config_registry", url)
    monkeypatch.delenv("CLAUDE_BOTTLE_OFFLINE", raising=False)
    assert claude_code.resolve_version("latest") == "2.9.9"
    assert claude_code.resolve_version("2.1.3") == "2.1.3"  # a pinned version never asks
    answers["latest"] = "3.0.0"
    assert claude_code.resolve_version("latest") == "2.9.9" and answers["hits"] == 1  # cached
    cache = claude_code._cache()
    data = json.loads(cache.read_text())
    data["latest"]["at"] = time.time() - claude_code.TTL - 1
    cache.write_text(json.dumps(data))
    assert claude_code.resolve_version("latest") == "3.0.0"  # expired: asked again, a newer release
    answers["latest"] = "not-a-version"
    data = json.loads(cache.read_text())
    data["latest"]["at"] = 0
    cache.write_text(json.dumps(data))
    assert claude_code.resolve_version("latest") == "3.0.0"  # a bad answer keeps the last good one


def test_offline_or_unreachable_uses_the_last_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9")  # nothing listens there
    assert claude_code.resolve_version("latest", timeout=0.5) == "latest"  # never resolved: the tag itself
    with contextlib.suppress(FileNotFoundError):
        claude_code._cache().unlink()
    monkeypatch.setenv("CLAUDE_BOTTLE_OFFLINE", "1")
    assert claude_code.resolve_version("stable") == "stable"
