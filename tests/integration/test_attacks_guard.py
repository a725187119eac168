"""Issue 9, guard findings, on the real engine: attacks from inside a bottle and from its neighbours.

Only test-made objects are touched: the bottles these tests start, their containers, the fake internet,
and a neighbour container started here on the fake internet's network.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import NS, STATE, TEST_IMAGE, TEST_KEY, Cli, Internet, docker, trusted, write_manifest


def guard_addresses(slug: str) -> dict[str, str]:
    data = json.loads(docker("inspect", f"{NS}-{slug}-egress").stdout)[0]
    return {name: n["IPAddress"] for name, n in data["NetworkSettings"]["Networks"].items()}


def restarts(slug: str) -> tuple[int, bool, str]:
    out = docker(
        "inspect",
        "--format",
        "{{.RestartCount}} {{.State.OOMKilled}} {{.State.Status}}",
        f"{NS}-{slug}-egress",
    ).stdout.split()
    return int(out[0]), out[1] == "true", out[2]


# -- 3: the credential routes answer the bottle only ------------------------------------------------
def test_a_neighbour_on_the_outbound_network_cannot_use_the_routes(cli: Cli, bottle: str, internet: Internet) -> None:
    outbound_ip = guard_addresses(bottle)[internet.network]
    before = len(internet.requests("anthropic"))
    probe = (
        "import socket,sys\n"
        f"for port in (3128, 53):\n"
        "    s = socket.socket(); s.settimeout(5)\n"
        f"    try:\n        s.connect(('{outbound_ip}', port)); print('open', port)\n"
        "    except OSError as e:\n        print('closed', port, type(e).__name__)\n"
    )
    out = docker("run", "--rm", "--network", internet.network, TEST_IMAGE, "python3", "-c", probe).stdout
    assert "closed 3128 ConnectionRefusedError" in out and "closed 53" in out and "open" not in out, out
    # The control: from inside the bottle the same route answers and adds the key.
    _rc, text = cli.sh(
        bottle, "curl -sS -m 20 -d '{\"messages\":[]}' $ANTHROPIC_BASE_URL/v1/messages -o /dev/null -w '%{http_code}'"
    )
    assert text.startswith("200"), text
    assert len(internet.requests("anthropic")) == before + 1


def test_the_host_side_of_the_bottle_network_is_not_a_client(cli: Cli, bottle: str) -> None:
    """The bridge's gateway address (the host, and whatever routes through it) is refused by the guard."""
    internal = guard_addresses(bottle)[f"{NS}-{bottle}-internal"]
    req = urllib.request.Request(
        f"http://{internal}:3128/anthropic/v1/messages", data=b"{}", headers={"x-api-key": "x"}, method="POST"
    )
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(req, timeout=5)
    subnet = json.loads(docker("network", "inspect", f"{NS}-{bottle}-internal").stdout)[0]["IPAM"]["Config"]
    gateway = str(ipaddress.ip_network(subnet[0]["Subnet"])[1])
    line = cli.wait_line(bottle, kind="client", decision="deny", client=gateway)
    assert line["reason"] == "client outside the bottle"


# -- 4: the guard survives floods, records decisions first, comes back when killed -------------------
def test_parallel_huge_posts_do_not_kill_the_guard(cli: Cli, bottle: str) -> None:
    script = (
        "head -c 33554432 /dev/zero > /tmp/big; "
        "for i in 1 2 3 4 5 6 7 8; do curl -sS -m 60 -o /dev/null -w '%{http_code}\\n' --data-binary @/tmp/big "
        "http://forbidden.test/ & done; wait; "
        "for i in 1 2 3 4; do curl -sS -m 120 -o /dev/null -w '%{http_code}\\n' --data-binary @/tmp/big "
        "http://allowed.test/ & done; wait; rm /tmp/big"
    )
    t0 = time.monotonic()
    _rc, out = cli.sh(bottle, script)
    codes = out.split()
    assert codes.count("403") == 8 and codes.count("200") == 4, out
    assert time.monotonic() - t0 < 120
    assert restarts(bottle) == (0, False, "running")
    _rc, health = cli.sh(bottle, "curl -sS -m 5 --noproxy '*' http://egress:3128/__bottle/health")
    assert '"status": "ok"' in health
    # The engine's own healthcheck (from inside the guard, at its own address) says so too.
    deadline = time.monotonic() + 30
    status = ""
    while time.monotonic() < deadline and status != "healthy":
        status = docker("inspect", "--format", "{{.State.Health.Status}}", f"{NS}-{bottle}-egress").stdout
        status = status.strip()
        time.sleep(0.5)
    assert status == "healthy"


def test_a_held_upload_is_on_record_before_the_upstream_answers_and_closed_at_stop(
    cli: Cli, internet: Internet
) -> None:
    slug = cli.start()
    try:
        before = len(internet.requests("allowed"))
        proc = subprocess.Popen(
            [
                *cli.argv(
                    "exec", slug, "--", "curl", "-sS", "-m", "60", "-d", "payload-held", "http://allowed.test/_hold?60"
                )
            ],
            cwd=cli.cwd,
            env=cli.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while len(internet.requests("allowed")) == before:
            assert time.monotonic() < deadline, "the upload never reached the upstream"
            time.sleep(0.1)
        assert internet.requests("allowed")[-1]["body"] == "payload-held"
        line = cli.wait_line(slug, kind="http", path="/_hold", decision="allow", timeout=1)
        assert "bytes_up" not in line  # the decision line, written before the upstream answered
        cli.run("stop", slug, check=True)
        proc.wait(timeout=30)
        end = cli.end_of(slug, line)
        assert end["reason"] == "guard stopping" and end["bytes_up"] >= len("payload-held")
    finally:
        cli.run("stop", slug, "--rm")


def test_a_killed_guard_comes_back_and_a_stopped_one_leaves_the_agent_nowhere(cli: Cli, internet: Internet) -> None:
    slug = cli.start()
    try:
        name = f"{NS}-{slug}-egress"
        pid = docker("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert children, "the guard's init has no child"
        subprocess.run(["kill", "-9", *children], check=True)  # the guard process, as the OOM killer would
        deadline = time.monotonic() + 30
        while restarts(slug)[0] < 1 or restarts(slug)[2] != "running":
            assert time.monotonic() < deadline, f"guard not restarted: {restarts(slug)}"
            time.sleep(0.2)
        rc, out = cli.sh(slug, "for i in $(seq 50); do curl -fsS -m 2 http://allowed.test/ && break; sleep 0.2; done")
        assert "hello from allowed" in out, out
        # While the guard is down the agent has no way out at all (no guard, no route, no name).
        docker("stop", "-t", "1", name)
        assert cli.ls()[slug]["status"] == "running (guard exited)"  # ls says so
        for target in ("http://allowed.test/", f"http://{internet.allowed_ip}/"):
            for proxy in ("", "--noproxy '*'"):
                rc, out = cli.sh(slug, f"curl -sS -m 5 {proxy} {target}")
                assert rc != 0 and "hello" not in out, (target, proxy, out)
        docker("start", name)
    finally:
        cli.run("stop", slug, "--rm")


# -- 5: a full disk cannot blind the audit --------------------------------------------------------
@pytest.fixture
def small_home(tmp_path: Path) -> Iterator[Path]:
    """A state root on a 48 MiB tmpfs this test mounts (and unmounts): a disk the agent can fill."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_filling_the_disk_does_not_let_a_request_through_unrecorded(
    small_home: Path, tmp_path: Path, internet: Internet
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    c = Cli(small_home / "home", ws)
    trusted(c, write_manifest(ws, internet))
    slug = c.start()
    try:
        _rc, out = c.sh(slug, "dd if=/dev/zero of=$HOME/.claude/fill bs=1M 2>&1; df -h $HOME/.claude | tail -1")
        assert "No space left" in out, out
        before = len(internet.requests("allowed"))
        for i in range(40):
            c.sh(
                slug,
                f"curl -sS -m 10 -o /dev/null http://allowed.test/?n={i}; "
                "curl -sS -m 10 -o /dev/null http://forbidden.test/",
            )
        audit = (c.states / slug / "egress.jsonl").read_text()
        lines = [json.loads(x) for x in audit.splitlines() if x.strip()]  # every line is whole JSON
        reached = [r for r in internet.requests("allowed")[before:] if r["path"].startswith("/?n=")]
        recorded = {ln.get("query") for ln in lines if ln.get("decision") == "allow" and ln.get("path") == "/"}
        assert reached, "nothing got through at all: the test proves nothing"
        for r in reached:
            assert r["path"][2:] in recorded, f"{r['path']} reached the upstream with no allow line"
        assert sum(1 for ln in lines if ln.get("host") == "forbidden.test") >= 1
    finally:
        c.sh(slug, "rm -f $HOME/.claude/fill")
        c.run("stop", slug, "--rm")


# -- 8, 9, 12, 13: tunnels, the record, the container log, DNS floods -------------------------------
def test_tunnel_tricks_relay_nothing(cli: Cli, bottle: str, internet: Internet) -> None:
    before = len(internet.requests("allowed"))
    _rc, out = cli.sh(
        bottle,
        "python3 - <<'EOF'\n"
        "import socket, ssl, contextlib\n"
        "def tunnel(first, half_close):\n"
        "    s = socket.create_connection(('egress', 3128), timeout=10)\n"
        "    s.sendall(b'CONNECT allowed.test:80 HTTP/1.1\\r\\n\\r\\n')\n"
        "    assert b' 200 ' in s.recv(100)\n"
        "    s.sendall(first)\n"
        "    if half_close: s.shutdown(socket.SHUT_WR)\n"
        "    print('reply', s.recv(200))\n"
        "tunnel(b'\\x16\\x03GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n', True)\n"
        "ctx = ssl.create_default_context(); ctx.check_hostname = False\n"
        "i, o = ssl.MemoryBIO(), ssl.MemoryBIO()\n"
        "obj = ctx.wrap_bio(i, o, server_hostname=None)\n"
        "with contextlib.suppress(ssl.SSLWantReadError): obj.do_handshake()\n"
        "tunnel(o.read(), False)\n"
        "EOF",
    )
    assert out.count("reply b''") == 2, out
    cli.wait_line(bottle, kind="connect", decision="deny", reason="incomplete-client-hello")
    cli.wait_line(bottle, kind="connect", decision="deny", reason="no-sni")
    assert len(internet.requests("allowed")) == before


def test_the_record_keeps_paths_queries_and_the_guards_own_words(cli: Cli, bottle: str) -> None:
    segment = "Zx8QmP2vR7tK9wL4nB6yH3jD5fG1sA0c"
    cli.sh(bottle, f"curl -sS -m 10 -o /dev/null 'http://allowed.test/v1/{segment}?page=2'")
    line = cli.wait_line(bottle, kind="http", path=f"/v1/{segment}", decision="allow")
    assert line["query"] == "page=2"
    cli.sh(bottle, "curl -sS -m 10 -o /dev/null -H 'Content-Length: 99999999999' -X POST http://allowed.test/")
    cli.wait_line(bottle, reason="request body over 32 MiB", decision="deny")


def test_the_container_log_is_bounded(cli: Cli, bottle: str) -> None:
    cli.sh(bottle, "head -c 40000000 /dev/zero | tr '\\0' 'x' | fold -w 1000 > /proc/1/fd/1")
    path = docker("inspect", "--format", "{{.LogPath}}", f"{NS}-{bottle}-agent").stdout.strip()
    total = sum(p.stat().st_size for p in Path(path).parent.glob(Path(path).name + "*"))
    assert 0 < total <= 2 * 10 * 1024 * 1024 + 1024 * 1024, total


def test_a_dns_flood_cannot_fill_the_log(cli: Cli, bottle: str) -> None:
    audit = cli.home / STATE / bottle / "egress.jsonl"
    size0, t0 = audit.stat().st_size, time.monotonic()
    cli.sh(
        bottle,
        "python3 - <<'EOF'\n"
        "import socket, os\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for i in range(20000):\n"
        "    name = b''.join(bytes([63]) + os.urandom(32).hex()[:63].encode() for _ in range(3))\n"
        "    head = b'\\x12\\x34\\x01\\x00\\x00\\x01' + bytes(6)\n"
        "    s.sendto(head + name + b'\\x00\\x00\\x01\\x00\\x01', ('egress', 53))\n"
        "EOF",
    )
    summary = cli.wait_line(bottle, kind="summary", source="dns")  # written on the guard's one-second timer
    grown, elapsed = audit.stat().st_size - size0, time.monotonic() - t0
    # The DNS budget: a 32 KiB burst plus 8 KiB a second, plus the summaries.
    assert grown < 32 * 1024 + 8 * 1024 * elapsed + 16 * 1024, (grown, elapsed)
    assert summary["suppressed"] > 1000
    assert TEST_KEY not in audit.read_text()
