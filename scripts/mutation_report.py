"""Turn mutmut's results (mutants/**/*.meta) into docs/test-strength.md: score per module, survivors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "test-strength.md"
EQUIVALENT = ROOT / "tests" / "mutation-equivalent.txt"
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout", 24: "timeout",
          -24: "timeout", 152: "timeout", 255: "timeout", 37: "killed"}  # fmt: skip
GOALS = {"guard": 0.85, "other": 0.70}
BEGIN, END = "<!-- mutation:begin -->", "<!-- mutation:end -->"


def equivalent() -> dict[str, str]:
    """mutant name -> why it cannot change behaviour (one per line: NAME  reason)."""
    out = {}
    if EQUIVALENT.exists():
        for line in EQUIVALENT.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, why = line.partition(" ")
                out[name.strip()] = why.strip()
    return out


def main() -> int:
    metas = sorted((ROOT / "mutants").rglob("*.py.meta"))
    if not metas:
        print("no mutmut results: run ./scripts/mutation first", file=sys.stderr)
        return 1
    eq = equivalent()
    rows, survivors = [], []
    totals: dict[str, Counter[str]] = {"guard": Counter(), "other": Counter()}
    for meta in metas:
        module = str(meta.relative_to(ROOT / "mutants")).removesuffix(".meta")
        try:
            data = json.loads(meta.read_text())
        except ValueError:  # cut while being written (the run was stopped): say so, count nothing of it
            print(f"{module}: its results file is cut (the run was stopped while writing it): not counted")
            continue
        c: Counter[str] = Counter()
        for name, code in data.get("exit_code_by_key", {}).items():
            status = STATUS.get(code, "suspicious") if code is not None else "not checked"
            if status in ("survived", "no tests") and name in eq:
                status = "equivalent"
            c[status] += 1
            if status in ("survived", "no tests"):
                survivors.append((module, name, status))
        if not c:
            continue
        counted = c["killed"] + c["timeout"] + c["survived"] + c["no tests"]
        score = (c["killed"] + c["timeout"]) / counted if counted else 1.0
        group = "guard" if "/guard/" in module else "other"
        totals[group] += c
        rows.append((module, c, score))
    checked = sum(c["killed"] + c["timeout"] + c["survived"] + c["no tests"] for c in totals.values())
    if not checked:
        print("no mutant was checked: the run failed (run `.venv/bin/mutmut run` to see why)", file=sys.stderr)
        return 1
    unchecked = sum(c["not checked"] for c in totals.values())
    lines = [
        BEGIN,
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} with mutmut (`./scripts/mutation`), against the unit tests"
        + (f"; {unchecked} mutants were not reached before the run stopped." if unchecked else "."),
        "",
    ]
    lines += [
        "| module | mutants | killed | timeout | survived | no tests | equivalent | score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for module, c, score in rows:
        lines.append(
            f"| `{module}` | {sum(c.values())} | {c['killed']} | {c['timeout']} | {c['survived']} | {c['no tests']} "
            f"| {c['equivalent']} | {score:.0%} |"
        )
    ok = True
    lines.append("")
    for group, c in totals.items():
        counted = c["killed"] + c["timeout"] + c["survived"] + c["no tests"]
        score = (c["killed"] + c["timeout"]) / counted if counted else 1.0
        met = score >= GOALS[group]
        ok &= met
        label = "the guard (`guard/`)" if group == "guard" else "state, cleanup, lifecycle"
        verdict = "met" if met else "NOT met"
        lines.append(
            f"- **{label}: {score:.1%}** of {counted} counted mutants killed (goal {GOALS[group]:.0%}: {verdict})"
        )
    lines += ["", f"Survivors ({len(survivors)}), as `mutmut show NAME` names them:", "", "```"]
    lines += [f"{status:9} {name}" for _module, name, status in survivors]
    lines += ["```", "", END]
    text = DOC.read_text() if DOC.exists() else "# Test strength\n\n" + BEGIN + "\n" + END + "\n"
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), "\n".join(lines), text, flags=re.S)
    DOC.write_text(text)
    print("\n".join(lines[4 : 6 + len(rows) + 3]))
    subprocess.run(["git", "-C", str(ROOT), "--no-pager", "diff", "--stat", str(DOC)], check=False)
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
