"""Plot a results file: guard throughput (MiB/s) and start latency, as one PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def plot(results: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[dict[str, Any]] = json.loads(results.read_text())["rows"]
    tp = [r for r in rows if r["name"].startswith("CONNECT throughput")]
    starts = [r for r in rows if r["name"].startswith("start --detach")]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if tp:
        labels = ["direct"] + [r["name"].split(": ", 1)[1] for r in tp]
        values = [tp[0]["baseline"]] + [r["ours"] for r in tp]
        a.bar(labels, values, color=["#999999", "#2a7ab0", "#c9a227", "#8a5a9e"][: len(values)])
        a.set_ylabel("MiB/s")
        a.set_title(f"CONNECT tunnel throughput ({tp[0]['name'].split(':')[0].split()[-2]} MiB, loopback)")
        a.tick_params(axis="x", labelrotation=15)
    if starts:
        labels = ["claude-bottle start --detach"] + [
            r["baseline_name"].replace("docker compose ", "compose ") for r in starts
        ]
        values = [starts[0]["ours"]] + [r["baseline"] for r in starts]
        b.bar(labels, values, color=["#2a7ab0", "#999999", "#bbbbbb"][: len(values)])
        b.set_ylabel("seconds (p50)")
        b.set_title("bottle start, warm images")
        b.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
