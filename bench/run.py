"""Run the benchmarks: ./scripts/bench [--quick] [--only lifecycle|guard|isolation] (or python -m bench.run ...)

Writes bench/results/<date>.json and prints a Markdown table (ratios against bare baselines measured
in the same run; absolute times only beside their ratio).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from datetime import UTC, datetime

from . import guard, isolation, lifecycle, top
from .common import ROOT, Row

SECTIONS = {"guard": guard.run, "lifecycle": lifecycle.run, "isolation": isolation.run, "operator": top.run}


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"
    return f"{v:.1f} {unit}"


def table(rows: list[Row]) -> str:
    out = ["| section | measure | ours | baseline | ratio | goal | met |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        base = f"{fmt(r.baseline, r.unit)} ({r.baseline_name})" if r.baseline is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[r.met]
        note = f" ({r.note})" if r.note else ""
        out.append(f"| {r.section} | {r.name}{note} | {fmt(r.ours, r.unit)} | {base} | {ratio} | {r.goal} | {met} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and bottles")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append")
    args = parser.parse_args()
    rows: list[Row] = []
    for name in args.only or list(SECTIONS):
        rows += SECTIONS[name](quick=args.quick)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    engine = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, check=False
    ).stdout.strip()
    result = {
        "date": stamp,
        "quick": args.quick,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(), "engine": engine},
        "rows": [r.as_json() for r in rows],
    }
    out = ROOT / "bench" / "results" / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(f"\nresults: {out.relative_to(ROOT)}")
    try:
        from .plot import plot

        png = ROOT / "docs" / "benchmarks.png"
        plot(out, png)
        print(f"plot: {png.relative_to(ROOT)}")
    except ImportError:
        print("plot skipped: pip install -e '.[bench]' for matplotlib")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
