"""Published ports (issue 24): a dev server in a real bottle answers on the host's loopback and nowhere else,
every inbound connection is on record, and publishing gives the agent no new way out."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import NS, Cli, Internet, docker, user_project

SERVE = (
    "cd /tmp && echo hello-from-the-dev-server > index.html && "
    "(nohup python3 -m http.server {port} --bind {bind} >/dev/null 2>&1 &)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


def until(url: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get(url)
        except (urllib.error.URLError, OSError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def relay(slug: str) -> dict[str, Any]:
    out = docker("inspect", f"{NS}-{slug}-ports").stdout
    found: dict[str, Any] = json.loads(out)[0]
    return found


def gateway(network: str) -> str:
    return docker("network", "inspect", "--format", "{{(index .IPAM.Config 0).Gateway}}", network).stdout.strip()


@pytest.fixture(scope="module")
def host_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def ported(tmp_path_factory: pytest.TempPathFactory, internet: Internet, host_port: int) -> Iterator[Cli]:
    """The test manifest, its agent publishing its port 8000 at the module's free host port."""

    def edit(text: str) -> str:
        return text.replace("[agents.claude]\n", f"[agents.claude]\nports = [{{ guest = 8000, host = {host_port} }}]\n")

    with user_project(tmp_path_factory, internet, "ports", edit=edit) as c:
        yield c


def test_a_dev_server_answers_on_the_hosts_loopback_only_and_each_connection_is_on_record(
    ported: Cli, internet: Internet, host_port: int
) -> None:
    slug = ported.start()
    try:
        rc, out = ported.sh(slug, SERVE.format(port=8000, bind="0.0.0.0"))
        assert rc == 0, out
        assert "hello-from-the-dev-server" in until(f"http://127.0.0.1:{host_port}/")
        # Published on loopback alone, as the engine holds it, and not reachable on the host's other side.
        bindings = relay(slug)["HostConfig"]["PortBindings"]
        assert bindings == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(host_port)}]}
        with pytest.raises(OSError):
            socket.create_connection((gateway(internet.network), host_port), timeout=3).close()
        # On record: the connection when it was made, its end with what it carried.
        line = ported.wait_line(slug, kind="inbound", port=8000, decision="allow")
        end = ported.wait_line(slug, kind="inbound-end", id=line["id"])
        assert end["bytes_out"] > len("hello-from-the-dev-server") and end["bytes_in"] > 0
        # ls and port say so.
        assert ported.ls()[slug]["ports"] == [{"guest": 8000, "host": host_port, "address": "127.0.0.1"}]
        listed = ported.run("port", slug, check=True).stdout.split("\n")
        assert listed[0] == f"8000/tcp -> 127.0.0.1:{host_port}"
        assert f"127.0.0.1:{host_port}->8000" in ported.run("ls", check=True).stdout
    finally:
        ported.run("stop", slug, "--rm")
    # stop took the relay with the bottle, and the bottle's networks with them.
    assert docker("ps", "-aq", "--filter", f"name={NS}-{slug}-ports").stdout.strip() == ""
    assert docker("network", "ls", "-q", "--filter", f"name={NS}-{slug}").stdout.strip() == ""


def test_publishing_gives_the_agent_no_new_way_out(ported: Cli, internet: Internet) -> None:
    slug = ported.start()
    try:
        sub = relay(slug)["NetworkSettings"]["Networks"]
        internal = sub[f"{NS}-{slug}-internal"]["IPAddress"]
        outside = sub[internet.network]["IPAddress"]
        ported.sh(slug, SERVE.format(port=8000, bind="0.0.0.0"))
        # From inside: the relay's addresses, on the published port and any other, and the world beyond,
        # exactly as refused as in a bottle without ports.
        for target in (f"{internal}:8000", f"{internal}:80", f"{outside}:8000", f"{internet.forbidden_ip}:80"):
            for proxy in ("", "--noproxy '*'"):
                rc, out = ported.sh(slug, f"curl -fsS -m 4 {proxy} http://{target}/")
                assert rc != 0 and "hello" not in out, (target, proxy, out)
        # Nor can the agent turn the relay around: a connection out through the published port's return path.
        rc, out = ported.sh(slug, f"python3 -c \"import socket; socket.create_connection(('{internal}', 8000), 3)\"")
        assert rc != 0, out
    finally:
        ported.run("stop", slug, "--rm")


def test_port_publishes_closes_and_explains_a_localhost_server(cli: Cli) -> None:
    slug = cli.start()
    try:
        a, b = free_port(), free_port()
        cli.sh(slug, SERVE.format(port=8000, bind="0.0.0.0"))
        cli.sh(slug, SERVE.format(port=8001, bind="127.0.0.1").replace("cd /tmp", "mkdir -p /tmp/l && cd /tmp/l"))
        got = cli.run("port", slug, "8000", "--host", str(a), check=True).stdout.strip()
        assert got == f"8000/tcp -> 127.0.0.1:{a}"
        assert "hello-from-the-dev-server" in until(f"http://127.0.0.1:{a}/")
        cli.run("port", slug, "8001", "--host", str(b), check=True)
        assert "hello" in get(f"http://127.0.0.1:{a}/")  # the first one still published
        with pytest.raises((urllib.error.URLError, OSError, ConnectionError)):
            get(f"http://127.0.0.1:{b}/")
        refused = cli.wait_line(slug, kind="inbound", port=8001, decision="refused")
        assert "localhost only" in refused["reason"] and "0.0.0.0" in refused["reason"]
        # A taken host port is one line naming the fix, and what was published stays.
        taken = cli.run("port", slug, "8002", "--host", str(a))
        assert taken.returncode != 0 and "already carries the agent's port 8000" in taken.stderr
        cli.run("port", slug, "8001", "--close", check=True)
        assert cli.run("port", slug, check=True).stdout.strip() == f"8000/tcp -> 127.0.0.1:{a}"
        cli.run("port", slug, "8000", "--close", check=True)
        assert cli.run("port", slug, check=True).stdout.strip() == ""
        with pytest.raises((urllib.error.URLError, OSError, ConnectionError)):
            get(f"http://127.0.0.1:{a}/", timeout=2)
    finally:
        cli.run("stop", slug, "--rm")


def test_a_manifest_port_already_taken_here_fails_before_anything_is_built(
    tmp_path_factory: pytest.TempPathFactory, internet: Internet
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]

        def edit(text: str) -> str:
            return text.replace("[agents.claude]\n", f"[agents.claude]\nports = [{port}]\n")

        with user_project(tmp_path_factory, internet, "ports-taken", edit=edit) as c:
            t0 = time.monotonic()
            r = c.run("start", "claude", "--detach")
            assert r.returncode != 0 and f"port {port} on 127.0.0.1 is taken" in r.stderr
            assert "ports = [{ guest = " in r.stderr
            assert time.monotonic() - t0 < 20 and c.ls() == {}


def test_cleanup_reaps_a_bottle_that_publishes_with_its_relay_and_networks(ported: Cli, host_port: int) -> None:
    slug = ported.start()
    assert relay(slug)["State"]["Running"]
    r = ported.run("cleanup", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"removed container {NS}-{slug}-ports" in r.stdout
    assert docker("ps", "-aq", "--filter", f"name={NS}-{slug}").stdout.strip() == ""
    assert docker("network", "ls", "-q", "--filter", f"name={NS}-{slug}").stdout.strip() == ""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", host_port), timeout=2).close()
