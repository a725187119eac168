"""What `top` costs while nothing happens (issue 24): 10 idle bottles, `claude-bottle top` live in a real
terminal (tmux, 80x24) for a while, its CPU time and memory against `docker stats` (the engine's own live
view) over the same bottles and the same time, in one run. Also the screen it showed, for the README."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .common import ROOT, Bottles, Row

SECTION = "operator"
WINDOW = 20.0  # seconds each view runs
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_and_rss(pids: list[int]) -> tuple[float, int]:
    cpu, rss = 0.0, 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / TICK
            rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return cpu, rss


def _tree(pid: int) -> list[int]:
    out = [pid]
    for p in out:
        try:
            out += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            continue
    return out


def _watch(session: str, cmd: str) -> tuple[float, int, str]:
    """CPU seconds and peak RSS of `cmd` (and its children) over WINDOW in a tmux pane; its last screen."""
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd], check=True)
    try:
        time.sleep(3.0)  # started, first screen drawn: the idle cost is what follows
        pane = int(subprocess.run(["tmux", "display", "-p", "-t", session, "#{pane_pid}"], capture_output=True,
                                  text=True, check=True).stdout)  # fmt: skip
        before, _ = _cpu_and_rss(_tree(pane))
        peak = 0
        end = time.monotonic() + WINDOW
        while time.monotonic() < end:
            peak = max(peak, _cpu_and_rss(_tree(pane))[1])
            time.sleep(1.0)
        after, _ = _cpu_and_rss(_tree(pane))
        shot = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True, check=False
        ).stdout
        return after - before, peak, shot
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)


def run(*, quick: bool) -> list[Row]:
    b = Bottles()
    n = 3 if quick else 10
    try:
        for _ in range(n):
            b.start()
        env = " ".join(
            f"{k}={shlex.quote(v)}" for k, v in b.env.items() if k.startswith(("CLAUDE_BOTTLE", "PATH", "HOME"))
        )
        top = f"cd {shlex.quote(str(b.project))} && env {env} {shlex.quote(sys.executable)} -m claude_bottle top"
        stats = "docker stats --format 'table {{.Name}}\\t{{.CPUPerc}}\\t{{.MemUsage}}'"
        ours_cpu, ours_rss, shot = _watch(f"cbbench-top-{os.getpid()}", top)
        base_cpu, base_rss, _ = _watch(f"cbbench-stats-{os.getpid()}", stats)
        (ROOT / "docs" / "top-screen.txt").write_text(shot.rstrip() + "\n")
        pct = lambda cpu: 100 * cpu / WINDOW  # noqa: E731
        return [
            Row(SECTION, f"top, idle, {n} bottles: CPU", pct(ours_cpu), pct(base_cpu), "docker stats, same bottles",
                "%", "<=1.5x", ours_cpu <= 1.5 * base_cpu, f"% of one core over {WINDOW:.0f} s, refresh 1 s"),
            Row(SECTION, f"top, idle, {n} bottles: memory", ours_rss / 2**20, base_rss / 2**20,
                "docker stats, same bottles", "MiB", "", None, "peak resident, its process tree"),
        ]  # fmt: skip
    finally:
        b.cleanup()
        shutil.rmtree(b.dir, ignore_errors=True)
