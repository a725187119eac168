"""The agent under gVisor against the same agent under runc, in one run (issue 23): start, stop, a verb's
round trip, and the work an agent does (a git clone and status of a local repository, an offline `npm
install` of a small package set from tarballs, a burst of small-file system calls). Each row's baseline is
the runc bottle measured beside it."""

from __future__ import annotations

import shutil

from .common import Bottles, Row, p50

SECTION = "isolation"

# Inside the bottle, in its own tmp: nothing reaches the network (the bottle has no way out but the guard).
GIT_WORK = (
    "set -e; d=$(mktemp -d); cd $d; git init -q src; cd src; "
    "for i in $(seq 1 300); do echo $i > f$i.txt; done; git add -A; "
    "git -c user.name=b -c user.email=b@b commit -qm one; cd ..; "
    "git clone -q file://$d/src copy; cd copy; git status --short; cd /; rm -rf $d"
)
NPM_WORK = (
    "set -e; d=$(mktemp -d); cd $d; for p in a b c d e; do mkdir $p; "
    'printf \'{"name":"cbb-%s","version":"1.0.0"}\' $p > $p/package.json; '
    'for i in $(seq 1 40); do echo "module.exports=$i" > $p/m$i.js; done; '
    "(cd $p && npm pack -q >/dev/null); done; mkdir app; cd app; echo '{}' > package.json; "
    "npm install -q --offline --no-audit --no-fund ../a/cbb-a-1.0.0.tgz ../b/cbb-b-1.0.0.tgz "
    "../c/cbb-c-1.0.0.tgz ../d/cbb-d-1.0.0.tgz ../e/cbb-e-1.0.0.tgz >/dev/null; ls node_modules | wc -l; "
    "cd /; rm -rf $d"
)
SYSCALLS = (
    'python3 -c "import os, tempfile\nd = tempfile.mkdtemp()\n'
    "for i in range(3000):\n p = os.path.join(d, str(i)); open(p, 'w').write('x'); os.stat(p); os.unlink(p)\n"
    'os.rmdir(d)"'
)


def _exec(b: Bottles, slug: str, script: str) -> float:
    return b.run("exec", slug, "--", "sh", "-c", script)[0]


def measure(b: Bottles, isolation: str, reps: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in ("start", "stop", "exec", "git", "npm", "syscalls")}
    for _ in range(reps):
        t, proc = b.run("start", "claude", "--detach", "--isolation", isolation)
        slug = proc.stdout.strip()
        out["start"].append(t)
        try:
            _exec(b, slug, "true")  # the first exec warms the page cache for both alike
            out["exec"].append(_exec(b, slug, "true"))
            out["git"].append(_exec(b, slug, GIT_WORK))
            out["npm"].append(_exec(b, slug, NPM_WORK))
            out["syscalls"].append(_exec(b, slug, SYSCALLS))
        finally:
            out["stop"].append(b.run("stop", slug)[0])
            b.run("stop", slug, "--rm", check=False)
    return out


def run(*, quick: bool) -> list[Row]:
    b = Bottles()
    try:
        reps = 2 if quick else 5
        b.run("start", "claude", "--detach")  # warm: images built and cached
        b.cleanup()
        runc, gvisor = {}, {}
        # Interleaved, so a drift of the machine over the run falls on both alike.
        for _ in range(reps):
            for iso, into in (("container", runc), ("gvisor", gvisor)):
                for k, v in measure(b, iso, 1).items():
                    into.setdefault(k, []).extend(v)
        names = {
            "start": ("start --detach (until ready)", "<=1.5x"),
            "stop": ("stop", "<=1.5x"),
            "exec": ("exec -- true (the verb's round trip)", ""),
            "git": ("git init + 300 files + commit + clone + status, in the bottle", ""),
            "npm": ("npm pack x5 + offline npm install of the 5 tarballs", ""),
            "syscalls": ("3000 x create/stat/unlink (python)", ""),
        }
        rows = []
        for key, (name, goal) in names.items():
            ours, base = p50(gvisor[key]), p50(runc[key])
            rows.append(
                Row(
                    SECTION,
                    f"gVisor: {name}",
                    ours,
                    base,
                    "the same bottle under runc",
                    goal=goal,
                    met=(ours <= 1.5 * base) if goal else None,
                )
            )
        return rows
    finally:
        b.cleanup()
        shutil.rmtree(b.dir, ignore_errors=True)
