"""The guard on loopback against direct connections, tinyproxy and squid (allowlisting), same run.

- CONNECT-tunnel throughput for a 256 MiB transfer (server sends with sendfile; client counts bytes)
- small-request latency p50/p99: absolute-URI GETs on fresh connections, added over direct
- 500 concurrent tunnels, each an echo round trip: errors counted
- the guard's RSS idle and at its peak under that load
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .common import ROOT, Row, p50

SECTION = "guard"
MiB = 1024 * 1024


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Servers:
    """Upstreams on loopback: bulk (sends the file on connect), http (fixed reply), echo."""

    def __init__(self, bulk_size: int) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="claude-bottle-bench-guard-"))
        self.blob = self.tmp / "blob"
        with self.blob.open("wb") as f:
            f.truncate(bulk_size)
        self.sockets: list[socket.socket] = []
        self.bulk = self._serve(self._bulk)
        self.http = self._serve(self._http)
        self.echo = self._serve(self._echo)

    def _serve(self, handler: Callable[[socket.socket], None]) -> int:
        srv = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.sockets.append(srv)

        def loop() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                threading.Thread(target=self._guarded, args=(handler, conn), daemon=True).start()

        threading.Thread(target=loop, daemon=True).start()
        return int(srv.getsockname()[1])

    @staticmethod
    def _guarded(handler: Callable[[socket.socket], None], conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            handler(conn)

    def _bulk(self, conn: socket.socket) -> None:
        with self.blob.open("rb") as f:
            conn.sendfile(f)
        conn.shutdown(socket.SHUT_WR)
        # Read what the client sent (its greeting) until it closes: closing with unread bytes resets the
        # connection, and a reset may drop data still in flight.
        conn.settimeout(30)
        while conn.recv(65536):
            pass

    @staticmethod
    def _http(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        while chunk := conn.recv(65536):
            conn.sendall(chunk)

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def our_guard(servers: Servers, tmp: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    ports = [servers.bulk, servers.http, servers.echo]
    policy = tmp / "policy.json"
    policy.write_text(
        json.dumps({"bottle": "bench", "allow": [{"host": "127.0.0.1", "ports": ports, "private": True}]})
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "claude_bottle.guard",
            "--policy",
            str(policy),
            "--audit",
            str(tmp / "egress.jsonl"),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def tinyproxy(servers: Servers, tmp: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    (tmp / "filter").write_text("^127\\.0\\.0\\.1$\n")
    conf = tmp / "tinyproxy.conf"
    ports = "\n".join(f"ConnectPort {p}" for p in (servers.bulk, servers.http, servers.echo))
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 1000\nAllow 127.0.0.1\n"
        f'Filter "{tmp / "filter"}"\nFilterDefaultDeny Yes\nFilterExtended Yes\n{ports}\n'
        "LogLevel Critical\nDisableViaHeader Yes\n"
    )
    proc = subprocess.Popen(
        ["tinyproxy", "-d", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def squid(servers: Servers, tmp: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    ports = " ".join(str(p) for p in (servers.bulk, servers.http, servers.echo))
    conf = tmp / "squid.conf"
    conf.write_text(
        f"http_port 127.0.0.1:{port}\n"
        "acl allowed_dst dst 127.0.0.1\n"
        f"acl bench_ports port {ports}\n"
        "acl CONNECT method CONNECT\n"
        "http_access allow allowed_dst bench_ports\n"
        "http_access deny all\n"
        "cache deny all\ncache_mem 8 MB\n"
        f"pid_filename {tmp / 'squid.pid'}\n"
        f"access_log none\ncache_log {tmp / 'cache.log'}\ncache_store_log none\n"
        "max_filedescriptors 4096\nworkers 1\nshutdown_lifetime 0 seconds\n"
        f"coredump_dir {tmp}\n"
    )
    proc = subprocess.Popen(["squid", "-N", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=30)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(20)


def tunnel_throughput(proxy: int | None, servers: Servers, size: int) -> float:
    """Bytes per second through a CONNECT tunnel (or direct when proxy is None)."""
    if proxy is None:
        sock = socket.create_connection(("127.0.0.1", servers.bulk))
    else:
        sock = socket.create_connection(("127.0.0.1", proxy))
        sock.sendall(f"CONNECT 127.0.0.1:{servers.bulk} HTTP/1.1\r\nHost: 127.0.0.1:{servers.bulk}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        if b" 200 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"CONNECT refused: {head[:100]!r}")
        # The guard relays a tunnel once the client's first bytes are judged (TLS or SSH): greet like SSH,
        # as an SSH client does on connect; the bulk server ignores it.
        sock.sendall(b"SSH-2.0-bench\r\n")
    buf = bytearray(4 * MiB)
    view = memoryview(buf)
    got = 0
    t0 = time.perf_counter()
    with sock:
        while n := sock.recv_into(view):
            got += n
    elapsed = time.perf_counter() - t0
    if got != size:
        raise RuntimeError(f"short transfer: {got} of {size}")
    return size / elapsed


def request_latencies(proxy: int | None, servers: Servers, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", proxy or servers.http)) as s:
            target = f"http://127.0.0.1:{servers.http}/" if proxy else "/"
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{servers.http}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        out.append(time.perf_counter() - t0)
        if not data.startswith(b"HTTP/1.1 200") and not data.startswith(b"HTTP/1.0 200"):
            raise RuntimeError(f"bad reply {data[:80]!r}")
    return out


def concurrent_tunnels(proxy: int, servers: Servers, n: int) -> int:
    """Open n tunnels at once, echo a message through each; the number that failed."""

    async def one(i: int) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy), 30)
            writer.write(f"CONNECT 127.0.0.1:{servers.echo} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            if b" 200 " not in head.split(b"\r\n")[0]:
                return False
            await gate.wait()  # every tunnel open at the same time
            # Tunnels carry TLS or SSH through the guard: an SSH-shaped greeting, echoed back by the upstream.
            msg = f"SSH-2.0-bench-{i}\r\n".encode() + b"x" * 64
            writer.write(msg)
            echoed = await asyncio.wait_for(reader.readexactly(len(msg)), 30)
            writer.close()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return False
        return echoed == msg

    async def run() -> int:
        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        await asyncio.sleep(2)
        gate.set()
        results = await asyncio.gather(*tasks)
        return sum(1 for r in results if not r)

    gate = asyncio.Event()
    return asyncio.run(run())


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def ensure_tools() -> None:
    missing = [t for t in ("tinyproxy", "squid") if not shutil.which(t)]
    if missing:
        if os.getuid() != 0:
            raise RuntimeError(f"install {' '.join(missing)} (Debian packages) to compare against them")
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing],
            check=True,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )


def run(*, quick: bool) -> list[Row]:
    _raise_nofile()  # the proxies started below inherit it: 500 tunnels need 1,000 descriptors
    ensure_tools()
    size = (64 if quick else 256) * MiB
    reps = 2 if quick else 3
    n_lat = 300 if quick else 2000
    n_conc = 500
    servers = Servers(size)
    rows: list[Row] = []
    try:
        direct_tp = p50([tunnel_throughput(None, servers, size) for _ in range(reps)])
        direct_lat = request_latencies(None, servers, n_lat)
        results: dict[str, dict[str, float]] = {}
        for name, ctx in (("claude-bottle guard", our_guard), ("tinyproxy", tinyproxy), ("squid", squid)):
            with tempfile.TemporaryDirectory() as tmp, ctx(servers, Path(tmp)) as (port, pid):
                time.sleep(0.5)
                idle = rss_mib(pid)
                tp = p50([tunnel_throughput(port, servers, size) for _ in range(reps)])
                lat = request_latencies(port, servers, n_lat)
                with PeakRss(pid) as peak:
                    failed = concurrent_tunnels(port, servers, n_conc)
                results[name] = {
                    "tp": tp,
                    "p50": p50(lat),
                    "p99": sorted(lat)[int(len(lat) * 0.99) - 1],
                    "failed": failed,
                    "idle": idle,
                    "peak": peak.peak,
                }
        ours, tiny = results["claude-bottle guard"], results["tinyproxy"]
        d50, d99 = p50(direct_lat), sorted(direct_lat)[int(len(direct_lat) * 0.99) - 1]
        mb = size // MiB
        for name, r in results.items():
            rows.append(
                Row(
                    SECTION,
                    f"CONNECT throughput {mb} MiB: {name}",
                    r["tp"] / MiB,
                    direct_tp / MiB,
                    "direct",
                    unit="MiB/s",
                    goal=">= tinyproxy (aim 1.5x)" if name == "claude-bottle guard" else "",
                    met=(r["tp"] >= tiny["tp"]) if name == "claude-bottle guard" else None,
                    note=f"{r['tp'] / tiny['tp']:.2f}x tinyproxy",
                )
            )
        for name, r in results.items():
            added = (r["p50"] - d50) * 1000
            rows.append(
                Row(
                    SECTION,
                    f"small request p50: {name}",
                    r["p50"] * 1000,
                    d50 * 1000,
                    "direct",
                    unit="ms",
                    goal="added < 1 ms" if name == "claude-bottle guard" else "",
                    met=added < 1.0 if name == "claude-bottle guard" else None,
                    note=f"added p50 {added:.2f} ms, p99 {r['p99'] * 1000:.2f} ms (direct {d99 * 1000:.2f})",
                )
            )
        for name, r in results.items():
            rows.append(
                Row(
                    SECTION,
                    f"{n_conc} concurrent tunnels: {name}",
                    r["failed"],
                    None,
                    "",
                    unit="failed",
                    goal="0 errors" if name == "claude-bottle guard" else "",
                    met=r["failed"] == 0 if name == "claude-bottle guard" else None,
                )
            )
        for name, r in results.items():
            rows.append(
                Row(
                    SECTION,
                    f"RSS idle / peak under load: {name}",
                    r["idle"],
                    None,
                    "",
                    unit="MiB",
                    goal="< 30 MiB idle" if name == "claude-bottle guard" else "",
                    met=r["idle"] < 30 if name == "claude-bottle guard" else None,
                    note=f"peak {r['peak']:.1f} MiB with {n_conc} tunnels",
                )
            )
        del ours
    finally:
        servers.close()
    return rows
