"""Published ports without an engine: the relay (guard/inbound.py) against loopback servers of the test's own,
the relay's label read back, a taken host port, the manifest's `ports`, and a project that cannot publish."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.backend import PublishedPort
from claude_bottle.backend.docker import ports
from claude_bottle.bottle.state import StateDir
from claude_bottle.errors import BottleError, ManifestError
from claude_bottle.guard import inbound
from claude_bottle.guard.audit import verify_chain
from claude_bottle.manifest import parse_manifest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


async def _relay_run_to(tmp_path: Path, guest: int, agent: str, client: Any) -> Path:
    """The relay on 127.0.0.1:guest, its agent at agent:guest (its own namespace, in a bottle), while client runs."""
    audit = tmp_path / "egress.jsonl"
    args = inbound.parse_args(
        ["--agent", agent, "--port", f"{guest}=127.0.0.1:1", "--audit", str(audit), "--bottle", "claude-abcde",
         "--ready-file", str(tmp_path / "ready"), "--listen-address", "127.0.0.1"]
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.ensure_future(inbound.serve(args, stop))
    while not (tmp_path / "ready").exists():
        await asyncio.sleep(0.01)
    try:
        await client()
    finally:
        await asyncio.sleep(0.2)
        stop.set()
        await task
    return audit


def test_the_relay_carries_both_ways_and_records_each_connection(tmp_path: Path) -> None:
    guest = free_port()

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read(1024)
        w.write(b"dev-server:" + data)
        await w.drain()
        w.close()

    async def client() -> None:
        agent = await asyncio.start_server(echo, "127.0.0.2", guest)  # the agent's dev server
        try:
            r, w = await asyncio.open_connection("127.0.0.1", guest)
            w.write(b"GET /")
            await w.drain()
            assert await r.read() == b"dev-server:GET /"
            w.close()
        finally:
            agent.close()

    audit = asyncio.run(_relay_run_to(tmp_path, guest, "127.0.0.2", client))
    got = lines(audit)
    assert got[0]["kind"] == "inbound-listen" and got[0]["ports"] == [{"port": guest, "published": "127.0.0.1:1"}]
    opened = next(x for x in got if x["kind"] == "inbound")
    assert opened["decision"] == "allow" and opened["bottle"] == "claude-abcde" and opened["peer"] == "127.0.0.1"
    end = next(x for x in got if x["kind"] == "inbound-end")
    assert end["id"] == opened["id"] and end["bytes_in"] == len(b"GET /")
    assert end["bytes_out"] == len(b"dev-server:GET /")
    assert verify_chain(audit)[2] == []  # the guard's chain, unbroken by the relay's lines


def test_a_port_nothing_listens_on_is_refused_with_the_usual_cause(tmp_path: Path) -> None:
    guest = free_port()

    async def client() -> None:
        r, w = await asyncio.open_connection("127.0.0.1", guest)
        assert await r.read() == b""  # closed at once: nothing answers in the bottle
        w.close()

    asyncio.run(_relay_run_to(tmp_path, guest, "127.0.0.3", client))
    refused = next(x for x in lines(tmp_path / "egress.jsonl") if x["kind"] == "inbound")
    assert refused["decision"] == "refused" and "localhost only" in refused["reason"] and "0.0.0.0" in refused["reason"]


@pytest.mark.parametrize("text", ["8000", "x=127.0.0.1:1", "0=127.0.0.1:1", "70000=a:1"])
def test_a_mapping_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        inbound.Mapping.parse(text)


def test_the_relays_label_reads_back_and_odd_parts_are_left_out() -> None:
    published = [PublishedPort(8000, 18000), PublishedPort(5173, 15173, "0.0.0.0")]
    assert ports.decode(ports.encode(published)) == published
    assert "," not in ports.encode(published)  # docker ps joins labels with commas
    assert ports.decode("8000=127.0.0.1:x junk 1=:2 9=127.0.0.1:9") == [PublishedPort(9, 9)]
    assert str(published[0]) == "8000/tcp -> 127.0.0.1:18000"


def test_a_taken_host_port_is_one_line_naming_the_fix() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(BottleError, match=f"port {port} on 127.0.0.1 is taken") as got:
            ports.check_free([PublishedPort(3000, port)])
        assert "--host N" in str(got.value) and "\n" not in str(got.value)
        ports.check_free([PublishedPort(3000, port)], taken_by_us=[PublishedPort(3000, port)])  # ours already


def test_the_manifests_ports() -> None:
    agent = parse_manifest(
        "[bottles.default]\n[agents.claude]\nports = [3000, { guest = 5173, host = 15173 }]\n"
    ).agents["claude"]
    assert [(p.guest, p.host_port) for p in agent.ports] == [(3000, 3000), (5173, 15173)]
    for bad, why in [
        ("[3000, { guest = 3000, host = 4000 }]", "guest port 3000 is named twice"),
        ("[3000, { guest = 4000, host = 3000 }]", "host port 3000 is named twice"),
        ("[0]", "greater than or equal to 1"),
        ("[true]", "valid dictionary"),
        (
            '[{ guest = 1, host = 1, bind = "0.0.0.0" }]',
            "bind",
        ),  # every interface is a flag of `port`, not a manifest word
    ]:
        with pytest.raises(ManifestError, match=why):
            parse_manifest(f"[bottles.default]\n[agents.claude]\nports = {bad}\n")


def project(tmp_path: Path, **change: Any) -> StateDir:
    state = StateDir("claude-abcde", root=tmp_path)
    state.path.mkdir(parents=True)
    doc: dict[str, Any] = {
        "services": {
            "egress": {
                "image": "claude-bottle-guard:1", "user": "10001:10001", "command": ["--policy", "p"],
                "networks": {"internal": {}, "outbound": {}}, "labels": {"claude-bottle.slug": "claude-abcde"},
                "volumes": [{"type": "bind", "source": str(tmp_path / "egress.jsonl"), "target": ports.AUDIT_TARGET}],
            },
            "net": {"environment": {"BOTTLE_INBOUND": "10.213.7.29"}},
        },
        "networks": {
            "internal": {"name": "p-internal", "ipam": {"config": [{"subnet": "10.213.7.16/28"}]}},
            "outbound": {"name": "p-outbound"},
        },
    }  # fmt: skip
    for path, value in change.items():
        *parents, last = path.split("__")
        node = doc
        for p in parents:
            node = node[p]
        node[last] = value
    (state.path / "compose.json").write_text(json.dumps(doc))
    return state


def test_a_project_that_can_publish(tmp_path: Path) -> None:
    p = ports.Project(project(tmp_path), "compose.json")
    assert (p.internal, p.outbound, p.inbound, p.user) == ("p-internal", "p-outbound", "10.213.7.29", "10001:10001")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"services__net__environment": {}}, "started before ports existed"),
        ({"services__egress__command": ["run", "--listen"]}, "not pipelock"),
        ({"services__egress__volumes": []}, "remote engine"),
        ({"networks__internal": {}}, "unreadable"),
    ],
)
def test_a_project_that_cannot_publish_says_why(tmp_path: Path, change: dict[str, Any], why: str) -> None:
    with pytest.raises(BottleError, match=why):
        ports.Project(project(tmp_path, **change), "compose.json")
