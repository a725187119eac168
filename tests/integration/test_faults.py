"""Faults survived, on the real engine (issue 14): a bottle whose containers die with the engine, a full
state filesystem during start, the CLI SIGKILLed during stop, and the guard under a soak."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from .conftest import NS, STATE, Cli, Internet, docker, made_cli


def containers(slug: str) -> list[str]:
    return docker("ps", "-a", "--filter", f"label=claude-bottle.slug={slug}", "--format", "{{.Names}}").stdout.split()


# -- the engine went down under running bottles --------------------------------------------------------
def test_a_bottle_whose_engine_went_down_is_shown_as_it_is_and_resumes(cli: Cli) -> None:
    """What an engine restart (or a host crash) leaves of a bottle: its containers exited, nobody told.
    (The test does to its own bottle's containers what the restart does: restarting the shared engine
    itself would stop every bottle on it, a user's included, which a test must never touch.)"""
    slug = cli.start()
    try:
        for svc in ("agent", "egress", "net"):
            docker("kill", f"{NS}-{slug}-{svc}")
        row = cli.ls()[slug]
        assert (row["status"], row["preserved"]) == ("crashed", "crash"), row
        record = json.loads((cli.home / STATE / slug / "bottle.json").read_text())
        assert record["error"].startswith("agent container exited")
        r = cli.run("resume", slug, "--detach")
        assert r.returncode == 0, r.stderr
        assert cli.ls()[slug]["status"] == "running" and cli.ls()[slug]["preserved"] is None
        rc, out = cli.sh(slug, "curl -sS -m 10 http://allowed.test/")
        assert rc == 0 and "hello from allowed" in out, out
    finally:
        cli.run("stop", slug, "--rm")


# -- a full state filesystem during start -----------------------------------------------------------------
@pytest.fixture
def tiny_home(tmp_path_factory: pytest.TempPathFactory, internet: Internet) -> Iterator[tuple[Cli, Path]]:
    """A CLI whose state root is on a tmpfs this test mounts, resized from too small to big enough."""
    with made_cli(tmp_path_factory, internet) as c:
        mnt = c.home / STATE
        mnt.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k,mode=0700", "tmpfs", str(mnt)], check=True)
        try:
            yield c, mnt
        finally:
            for slug in c.ls():
                c.run("stop", slug, "--rm")
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_state_filesystem_during_start_is_one_line_and_leaves_nothing(tiny_home: tuple[Cli, Path]) -> None:
    cli, mnt = tiny_home
    ours = ["ps", "-aq", "--filter", f"label=claude-bottle.namespace={NS}"]
    before = set(docker(*ours).stdout.split())
    failures = 0
    # Every point where a start can run out of space (finely while it writes its small files), until one fits.
    for kib in [*range(4, 129, 4), 192, 256, 384, 512, 1024, 2048, 4096, 8192, 16384]:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(mnt)], check=True)
        r = cli.run("start", "claude", "--detach")
        if r.returncode == 0:
            slug = r.stdout.strip()
            assert cli.ls()[slug]["status"] == "running"
            cli.run("stop", slug, "--rm", check=True)
            break
        failures += 1
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "No space left on device" in lines[0] and "free some space" in lines[0], (
            kib,
            r.stderr,
        )
        assert "Traceback" not in r.stderr
        assert list(mnt.iterdir()) == [], (kib, list(mnt.iterdir()))  # nothing half-made on disk ...
        assert set(docker(*ours).stdout.split()) == before, kib  # ... nor on the engine
    else:
        raise AssertionError("no start fit in 16 MiB")
    assert failures >= 3  # the sizes really did cut starts at several points


# -- the CLI killed during stop ------------------------------------------------------------------------------
def test_stop_again_finishes_what_a_killed_stop_began(cli: Cli, tmp_path: Path) -> None:
    slug = cli.start()
    shim, real = tmp_path / "shim", shutil.which("docker")
    shim.mkdir()
    mark = tmp_path / "down-began"
    (shim / "docker").write_text(
        f"#!{sys.executable}\n"
        "import os, subprocess, sys, time\n"
        "if 'compose' in sys.argv and 'down' in sys.argv:\n"
        f"    open('{mark}', 'w').close()\n"
        "    time.sleep(60)\n"
        f"os.execv('{real}', ['{real}', *sys.argv[1:]])\n"
    )
    (shim / "docker").chmod(0o755)
    proc = subprocess.Popen(
        cli.argv("stop", slug),
        cwd=cli.cwd,
        env=cli.env(PATH=f"{shim}:{os.environ['PATH']}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not mark.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "stop never reached compose down"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its docker child, as a kill -9 of the session
        proc.wait()
        assert sorted(containers(slug)) != []  # the stop did not get to remove anything
        r = cli.run("stop", slug)
        assert r.returncode == 0, r.stderr  # the dead stop's lock died with it
        assert containers(slug) == [] and cli.ls()[slug]["status"] == "stopped"
        assert not (cli.home / STATE / slug / "guard" / "secrets.json").exists()
    finally:
        cli.run("stop", slug, "--rm")


# -- the guard under a soak ------------------------------------------------------------------------------
SOAK = r"""
import os, socket, sys, threading, time
from urllib.parse import urlsplit
proxy = urlsplit(os.environ["HTTP_PROXY"])
N, TAG, WORKERS = int(sys.argv[1]), sys.argv[2], 16
results, lock = {}, threading.Lock()

def one(i):
    if i % 10 == 3:
        url = f"http://allowed.test/_reset?soak={TAG}-{i}"  # the upstream resets: the guard must still answer
    elif i % 10 == 7:
        url = f"http://forbidden.test/?soak={TAG}-{i}"  # refused
    else:
        url = f"http://allowed.test/_soak?soak={TAG}-{i}"
    s = socket.create_connection((proxy.hostname, proxy.port), timeout=20)
    try:
        host = urlsplit(url).hostname
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.") else "none"
        if status not in ("200", "403") and b"X-Claude-Bottle-Reason" in data:
            status += ":" + data.split(b"X-Claude-Bottle-Reason: ", 1)[1].split(b"\r\n", 1)[0].decode()
    except OSError as exc:
        status = type(exc).__name__
    finally:
        s.close()
    with lock:
        results[i] = status

def slow(i):
    # A slow client: its request head a byte at a time, then abandoned half-way or completed.
    s = socket.create_connection((proxy.hostname, proxy.port), timeout=30)
    head = f"GET http://allowed.test/_soak?slow={i} HTTP/1.1\r\nHost: allowed.test\r\n\r\n".encode()
    upto = len(head) if i % 2 else len(head) // 2
    try:
        for b in head[:upto]:
            s.send(bytes([b]))
            time.sleep(0.05)
        if i % 2:
            s.recv(65536)
    except OSError:
        pass
    s.close()

def worker(k):
    for i in range(k, N, WORKERS):
        one(i)

slows = [threading.Thread(target=slow, args=(i,)) for i in range(40)]
threads = [threading.Thread(target=worker, args=(k,)) for k in range(WORKERS)]
for t in slows + threads:
    t.start()
for t in slows + threads:
    t.join()
import json
counts = {}
for i, st in results.items():
    kind = {3: "reset", 7: "deny"}.get(i % 10, "ok")
    counts.setdefault(kind, {})
    counts[kind][st] = counts[kind].get(st, 0) + 1
print(len(results), json.dumps(counts))
"""


def guard_process(slug: str) -> tuple[int, int]:
    """The guard's python process: (resident KiB, open descriptors), read from the host."""
    pid = docker("inspect", "--format", "{{.State.Pid}}", f"{NS}-{slug}-egress").stdout.strip()
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    guard = children[0] if children else pid
    rss = next(
        int(x.split()[1]) for x in Path(f"/proc/{guard}/status").read_text().splitlines() if x.startswith("VmRSS")
    )
    return rss, len(list(Path(f"/proc/{guard}/fd").iterdir()))


def test_the_guard_survives_a_soak_with_resets_and_slow_clients(cli: Cli) -> None:
    """10,000 requests (a tenth to an upstream that resets, a tenth refused) with 40 slow clients: every
    one answered, the guard's memory and descriptors back where they were, every decision on record
    (one line each, or counted in a summary line once over the audit budget, which holds the log to
    32 KiB/s after a 1 MiB burst: a flood is answered 503 "slow down", never let through unrecorded)."""
    slug = cli.start()
    try:
        rc, out = cli.sh(slug, "python3 - 200 warm", stdin=SOAK)  # warm-up: buffers and caches at their size
        assert rc == 0, out
        time.sleep(2.0)
        rss0, fds0 = guard_process(slug)
        n = 10_000
        began = datetime.now(UTC).isoformat(timespec="milliseconds")
        t0 = time.monotonic()
        rc, out = cli.sh(slug, f"python3 - {n} main", stdin=SOAK)
        took = time.monotonic() - t0
        assert rc == 0, out
        total, counts_json = out.strip().splitlines()[-1].split(" ", 1)
        counts = json.loads(counts_json)
        assert int(total) == n
        slow_down = "503:over the audit budget: slow down"
        # Every request answered, never silence: refused ones 403; the others through (200), or a 502 for
        # an upstream that reset, or over the audit budget 503.
        assert counts["deny"] == {"403": n // 10}, counts
        assert set(counts["ok"]) <= {"200", slow_down} and counts["ok"].get("200", 0) >= 1000, counts
        assert set(counts["reset"]) <= {"502:upstream closed without answering", slow_down}, counts
        assert counts["reset"].get("502:upstream closed without answering", 0) >= 100, counts
        time.sleep(2.5)  # the slow clients' timeouts and the summary timer
        rss1, fds1 = guard_process(slug)
        assert rss1 - rss0 < 32 * 1024, f"guard memory grew {rss0} -> {rss1} KiB over {n} requests"
        assert fds1 <= fds0 + 4, f"guard descriptors {fds0} -> {fds1}: connections left open"
        # Every decision on record: its own line, or counted in a summary line.
        lines = [json.loads(x) for x in (cli.home / STATE / slug / "egress.jsonl").read_text().splitlines()]
        decided = [ln for ln in lines if ln.get("kind") != "end" and ln.get("query", "").startswith("soak=main-")]
        assert len({ln["query"] for ln in decided}) == len(decided)  # one line per request at most
        summarised = sum(ln["suppressed"] for ln in lines if ln.get("kind") == "summary" and ln["time"] >= began)
        assert n <= len(decided) + summarised <= n + 40, (len(decided), summarised)
        assert {ln["decision"] for ln in decided if int(ln["query"].rsplit("-", 1)[1]) % 10 == 7} == {"deny"}
        print(f"soak: {n} requests in {took:.1f}s, rss {rss0}->{rss1} KiB, fds {fds0}->{fds1}, {counts}")
    finally:
        cli.run("stop", slug, "--rm")
