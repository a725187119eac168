"""Bottle lifecycle against bare Docker: start, stop, ls, cleanup, and how many bottles fit (scale)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

from .common import Bottles, Row, p50, timed

SECTION = "lifecycle"


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True)


def compose_argv(b: Bottles, slug: str, *args: str) -> list[str]:
    state = b.state(slug)
    return [
        "docker",
        "compose",
        "-p",
        f"{b.namespace}-{slug}",
        "-f",
        str(state / "compose.json"),
        "--project-directory",
        str(state),
        *args,
    ]


def bench_start_stop(b: Bottles, reps: int) -> list[Row]:
    b.start()  # warm: images built and cached
    b.cleanup()
    ours_start, ours_stop, bare_wait, bare_up, bare_stop, bare_down = [], [], [], [], [], []
    for _ in range(reps):
        t, slug = b.start()
        ours_start.append(t)
        ours_stop.append(b.run("stop", slug)[0])
        # The same rendered compose file, brought up bare: `--wait` as the issue names it, and plain `-d`.
        t, _ = timed(compose_argv(b, slug, "up", "-d", "--wait"))
        bare_wait.append(t)
        bare_stop.append(timed(compose_argv(b, slug, "stop"))[0])
        timed(compose_argv(b, slug, "down", "--timeout", "1"))
        t, _ = timed(compose_argv(b, slug, "up", "-d"))
        bare_up.append(t)
        time.sleep(1)  # let the containers settle, as `stop` finds them
        bare_down.append(timed(compose_argv(b, slug, "down", "--volumes", "--timeout", "1"))[0])
        b.run("stop", slug, "--rm", check=False)
    s = p50(ours_start)
    return [
        Row(
            SECTION,
            "start --detach (until ready)",
            s,
            p50(bare_wait),
            "docker compose up -d --wait",
            goal="<=1.3x, <1.5 s p50",
            met=s <= 1.3 * p50(bare_wait) and s < 1.5,
            note="--wait waits out the guard's 10 s healthcheck interval; start does not",
        ),
        Row(
            SECTION,
            "start --detach (until ready)",
            s,
            p50(bare_up),
            "docker compose up -d (no wait)",
            goal="<=1.3x",
            met=s <= 1.3 * p50(bare_up),
        ),
        Row(
            SECTION,
            "stop",
            p50(ours_stop),
            p50(bare_stop),
            "docker compose stop",
            goal="<=1.3x",
            met=p50(ours_stop) <= 1.3 * p50(bare_stop),
            note="stop also removes containers and networks",
        ),
        Row(
            SECTION,
            "stop",
            p50(ours_stop),
            p50(bare_down),
            "docker compose down (the same work)",
            goal="<=1.2x",
            met=p50(ours_stop) <= 1.2 * p50(bare_down),
        ),
    ]


def start_many(b: Bottles, n: int) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    slugs = [b.start()[1] for _ in range(n)]
    return time.perf_counter() - t0, slugs


def bench_ls(b: Bottles, counts: list[int], reps: int) -> list[Row]:
    rows = []
    have = 0
    for n in counts:
        start_many(b, n - have)
        have = n
        ours = p50([b.run("ls")[0] for _ in range(reps)])
        bare = p50([timed(["docker", "ps", "-a"])[0] for _ in range(reps)])
        goal_ok = ours <= 1.3 * bare and (n < 30 or ours < 0.5)
        rows.append(
            Row(
                SECTION,
                f"ls, {n} bottle{'s' * (n > 1)}",
                ours,
                bare,
                "docker ps -a",
                goal="<=1.3x" + (", <0.5 s" if n >= 30 else ""),
                met=goal_ok,
            )
        )
    return rows


def scale(b: Bottles, n: int) -> list[Row]:
    """Idle bottles: memory per bottle (cgroup usage of its containers) and time to start / clean up all."""
    b.cleanup()
    t_start, _ = start_many(b, n)
    time.sleep(2)
    stats = docker("stats", "--no-stream", "--format", "{{json .}}").stdout.splitlines()
    total_mib = 0.0
    for line in stats:
        row = json.loads(line)
        if not row["Name"].startswith(f"{b.namespace}-"):
            continue
        used = row["MemUsage"].split("/")[0].strip()
        value = float(used.rstrip("KMGiB"))
        total_mib += value / 1024 if used.endswith("KiB") else value * 1024 if used.endswith("GiB") else value
    t_cleanup = b.run("cleanup", "--yes")[0]
    per = total_mib / n
    mem_total = int(open("/proc/meminfo").read().split()[1]) / 1024  # noqa: SIM115, PTH123
    return [
        Row("scale", f"start {n} idle bottles (sequential)", t_start, None, "", note=f"{t_start / n:.2f} s each"),
        Row(
            "scale",
            "memory per idle bottle",
            per,
            None,
            "",
            unit="MiB",
            note=f"{n} bottles: {total_mib:.0f} MiB; this machine's {mem_total / 1024:.0f} GiB holds about "
            f"{int(mem_total * 0.8 / per)} at this size (80% of RAM)",
        ),
        Row("scale", f"cleanup --yes, {n} bottles", t_cleanup, None, ""),
    ]


def bench_cleanup(b: Bottles, counts: list[int]) -> list[Row]:
    rows = []
    for n in counts:
        b.cleanup()
        start_many(b, n)
        ours = b.run("cleanup", "--yes")[0]
        _, slugs = start_many(b, n)
        ids = docker("ps", "-aq", "--filter", "label=claude-bottle.backend=docker").stdout.split()
        nets = docker("network", "ls", "-q", "--filter", "label=claude-bottle.backend=docker").stdout.split()
        t0 = time.perf_counter()
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=True)
        subprocess.run(["docker", "network", "rm", *nets], capture_output=True, check=True)
        bare = time.perf_counter() - t0
        for slug in slugs:
            shutil.rmtree(b.state(slug), ignore_errors=True)
        rows.append(
            Row(
                SECTION,
                f"cleanup --yes, {n} bottle{'s' * (n > 1)}",
                ours,
                bare,
                "docker rm -f + docker network rm",
                goal="<=1.3x",
                met=ours <= 1.3 * bare,
            )
        )
    return rows


def run(*, quick: bool) -> list[Row]:
    b = Bottles()
    try:
        rows = bench_start_stop(b, reps=3 if quick else 7)
        b.cleanup()
        rows += bench_ls(b, [1, 5] if quick else [1, 30], reps=5 if quick else 9)
        b.cleanup()
        rows += bench_cleanup(b, [1, 5] if quick else [1, 20])
        rows += scale(b, 5 if quick else 30)
        return rows
    finally:
        b.cleanup()
        shutil.rmtree(b.dir, ignore_errors=True)
