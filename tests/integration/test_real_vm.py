"""The real-VM suite (issue 12): a smolmachines bottle with a guest kernel that really boots. It runs where a
microVM can boot (Linux with vmx/svm and /dev/kvm open to the VMM's uid, or Apple Silicon) and is skipped
elsewhere with the measured reason, the same line `claude-bottle doctor` prints. On this machine kind the
host's KVM is nested PVM and the guest kernel stops at its first `lock cmpxchg16b` (see
docs/design/smolmachines.md).

What it proves, from inside the guest: the guard's one address is the only way out (another host
loopback address and port, the host's other addresses, and any name resolved without the guard all fail);
a headless Claude Code run reaches the fake Messages API through the credential route; cleanup reaps a
bottle whose guard died.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

from .conftest import TEST_KEY, Cli, Internet, docker, made_cli


def _why_no_vm() -> str | None:
    try:
        import smol  # noqa: F401
    except ImportError:
        return "the smolmachines SDK is not installed (pip install 'claude-bottle[smolmachines]')"
    from claude_bottle.backend.smolmachines.host import host_virtualisation, kvm_check

    for check in (host_virtualisation(), kvm_check()):
        if not check.ok:
            return f"{check.name}: {check.detail}"
    return None


WHY = _why_no_vm()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"no microVM boots on this host: {WHY}")


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory, internet: Internet) -> Iterator[tuple[Cli, str]]:
    with made_cli(tmp_path_factory, internet) as c:
        c.real_smol = True
        c.extra_env["CLAUDE_BOTTLE_BACKEND"] = "smolmachines"
        slug = c.start()
        yield c, slug


@pytest.fixture
def host_listener() -> Iterator[tuple[str, int]]:
    """A listener on every host address, answering "reached": the control shows the host can reach it."""
    srv = socket.create_server(("0.0.0.0", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nreached")

    threading.Thread(target=serve, daemon=True).start()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as control:
        assert b"reached" in control.recv(100)
    yield "127.0.0.1", port
    srv.close()


def test_the_guards_address_is_the_only_way_out(vm: tuple[Cli, str], host_listener: tuple[str, int]) -> None:
    c, slug = vm
    _, port = host_listener
    host_ip = docker("network", "inspect", "bridge", "--format", "{{(index .IPAM.Config 0).Gateway}}").stdout.strip()
    for target in (f"127.0.0.1:{port}", f"{host_ip}:{port}"):
        rc, out = c.sh(slug, f"curl -sS -m 5 --noproxy '*' http://{target}/")
        assert rc != 0 and "reached" not in out, (target, out)
    address = json.loads((c.states / slug / "vm.json").read_text())["address"]
    rc, out = c.sh(slug, f"curl -sS -m 5 --noproxy '*' http://{address}:{port}/")
    assert rc != 0 and "reached" not in out  # the guard's address, another port
    rc, out = c.sh(slug, "curl -sS -m 5 --noproxy '*' http://allowed.test/")
    assert rc != 0  # no name resolves without the guard
    rc, out = c.sh(slug, "curl -sS -m 10 http://allowed.test/")
    assert rc == 0, out
    rc, out = c.sh(slug, "curl -sS -m 10 -o /dev/null -w '%{http_code}' http://forbidden.test/")
    assert out.strip() == "403"
    c.wait_line(slug, decision="deny", host="forbidden.test")


def test_a_headless_claude_run_reaches_the_fake_api_through_the_route(vm: tuple[Cli, str], internet: Internet) -> None:
    c, _ = vm
    before = len(internet.requests("anthropic"))
    r = c.run("start", "claude", "--prompt", "say hello")
    assert r.returncode == 0, r.stderr
    seen = internet.requests("anthropic")[before:]
    assert seen and all({k.lower(): v for k, v in s["headers"].items()}["x-api-key"] == TEST_KEY for s in seen)


def test_cleanup_reaps_a_bottle_whose_guard_died(vm: tuple[Cli, str]) -> None:
    c, _ = vm
    slug = c.start()
    from .conftest import NS

    docker("kill", f"{NS}-sidecars-{slug}")
    c.run("cleanup", "--yes", check=True)
    assert docker("ps", "-a", "--filter", f"label=claude-bottle.slug={slug}", "--format", "{{.Names}}").stdout == ""
