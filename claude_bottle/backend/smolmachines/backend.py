"""SmolmachinesBottleBackend: the agent in a microVM (PyPI `smolmachines`, sdk.py), its guard in a sidecar
bundle on Docker (bundle.py), the VM's network scoped to the guard's loopback address and nothing else.

Images are the Docker backend's (built there, then handed to the VM as a `docker save` archive cached by
image id). Everything the bottle keeps lives in its state dir on the host, as on Docker.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from claude_bottle import engine
from claude_bottle.backend import BottleBackend, BottleCleanupPlan, BottlePlan, BottleStatus, Check, Progress, Report
from claude_bottle.backend.smolmachines import sdk
from claude_bottle.backend.smolmachines.bundle import ROLE_LABEL, Bundle, bundle_names, remove_bundle, start_bundle
from claude_bottle.backend.smolmachines.cleanup import SmolCleanupPlan, ours, plan_cleanup, run_cleanup
from claude_bottle.bottle.state import StateDir, now_iso, process_started, write_private
from claude_bottle.errors import BackendError, BottleError
from claude_bottle.guard import HEALTH_PATH
from claude_bottle.hostfs.walk import remove_tree
from claude_bottle.identity import AGENT_HOME, LABEL, SLUG_LABEL, Identity, namespace, object_labels
from claude_bottle.images import builder

if TYPE_CHECKING:
    from claude_bottle.bottle import Bottle
    from claude_bottle.guard_inputs.inputs import GuardInputs

__all__ = ["SmolmachinesBottleBackend"]

NAME = "smolmachines"
VM_FILE = "vm.json"  # the bundle's address and the agent's environment (no secrets), for exec and resume
BOOT_TIMEOUT = 90.0
STDIN_LIMIT = 16 * 2**20
RUN_LOG = "bottle-run.log"  # claude-home: a detached headless run's output (claude_code.RUN_LOG)

# Machine states from the SDK, as `ls` shows a container's.
_STATES = {"running": "running", "created": "created", "stopped": "exited", "failed": "exited"}


def memory_mb(text: str) -> int:
    m = re.fullmatch(r"([0-9]+)([kmg]?)", text)
    if not m:
        raise BottleError(f"resources.memory {text!r}: use a number with k, m or g")
    n, unit = int(m.group(1)), m.group(2)
    mb = {"": n / 2**20, "k": n / 1024, "m": n, "g": n * 1024}[unit]
    return max(128, math.ceil(mb))


def guard_answers(url: str) -> bool:
    """The guard's health endpoint answers 200 at `url` (asked directly, never through a proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}{HEALTH_PATH}", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _labels(state_slug: str) -> dict[str, str]:
    return object_labels(NAME, state_slug)


class SmolmachinesBottleBackend(BottleBackend):
    name = NAME
    # The agent is in a microVM of its own already, with its own kernel: stronger than gVisor's.
    isolations = ("container",)

    # -- start -----------------------------------------------------------------------------------
    def plan(self, *, bottle: Bottle) -> BottlePlan:
        """What cannot work on this backend is said before anything is built."""
        sdk.sdk()  # the SDK is installed, or one line naming the install command
        spec = bottle.spec
        if spec.egress.engine == "pipelock":
            raise BottleError(
                "egress.engine = 'pipelock' runs on the docker backend only: use the built-in guard, or "
                "--backend docker"
            )
        engine.require_networks(spec.egress.networks)
        names = bundle_names(bottle.slug)
        return BottlePlan(
            bottle,
            [f"microVM {names.machine}: agent sealed behind its guard in {names.container} (loopback only)"],
        )

    def prepare_images(self, *, plan: BottlePlan, progress: Progress) -> dict[str, str]:
        """The images from the neutral builder; the agent's handed to the VM as a cached `docker save`."""
        images = builder.prepare(plan.bottle, progress)
        images["agent-archive"] = str(builder.archive(images["agent"], progress, folder="smolmachines"))
        return images

    def start(self, *, plan: BottlePlan, images: dict[str, str], guard: GuardInputs, progress: Progress) -> None:
        b, state = plan.bottle, plan.state
        identity = Identity(b.slug, self.name, os.getpid(), process_started(os.getpid()) or 0.0, now_iso(), namespace())
        labels = identity.labels()
        run_dir = state.path / "run"
        remove_tree(run_dir)  # a stale "guard-ready" must never be trusted
        run_dir.mkdir()
        run_dir.chmod(0o777)  # the guard's unprivileged uid writes its mark; the state dir stays 0700
        progress("starting the guard (sidecar bundle)")
        bundle = start_bundle(
            slug=b.slug,
            port=guard.port,
            guard=guard,
            image=images["guard"],
            ids=b.ids,
            labels=labels,
            run_dir=run_dir,
            networks=b.spec.egress.networks,
        )
        env = self._agent_env(b, guard, bundle)
        user = f"{b.ids.agent_uid}:{b.ids.agent_gid}"
        write_private(
            state.path / VM_FILE,
            json.dumps({"address": bundle.address, "port": bundle.port, "env": env, "user": user}),
        )
        self._wait_guard(state, bundle, timeout=30.0)
        progress("booting the microVM")
        vm = sdk.Vm()
        res = b.spec.resources
        vm.create(
            name=bundle_names(b.slug).machine,
            image=images["agent-archive"],
            labels=labels,
            command=["sleep", "infinity"],
            mounts=self._mounts(b),
            cpus=max(1, math.ceil(res.cpus)),
            memory_mb=memory_mb(res.memory),
            allow_cidrs=[f"{bundle.address}/32"],
            env=env,
            workdir="/workspace",
            user=user,
            ready_timeout=BOOT_TIMEOUT,
        )
        self._plant_honey(state, guard)

    @staticmethod
    def _agent_env(b: Bottle, guard: GuardInputs, bundle: Bundle) -> dict[str, str]:
        # The guard's own address is reached directly (its routes and health), never through itself.
        env = guard.agent_environment(b.spec.env, slug=b.slug, url=bundle.url, direct=bundle.address)
        return {**env, "BOTTLE_GUARD_HEALTH": f"{bundle.url}{HEALTH_PATH}"}

    def read_only_paths(self, bottle: Bottle) -> list[str]:
        """Directories only: a file cannot be a VM mount, so `.git/config` is judged when the run ends."""
        ws = bottle.agent_workspace
        return [rel for rel in bottle.protected if (ws / rel).is_dir() and not (ws / rel).is_symlink()]

    @staticmethod
    def _mounts(b: Bottle) -> list[sdk.Mount]:
        """Workspace and ~/.claude as on Docker; the repository's control directories read-only (a file
        cannot be a VM mount: .git/config is settled when the run ends, as everywhere); the manifest's own."""
        ws = b.agent_workspace
        mounts = [
            sdk.Mount(str(ws), "/workspace"),
            sdk.Mount(str(b.state.claude_home), f"{AGENT_HOME}/.claude"),
        ]
        for rel in b.protected:
            if (ws / rel).is_dir() and not (ws / rel).is_symlink():
                mounts.append(sdk.Mount(str(ws / rel), f"/workspace/{rel}", read_only=True))
        mounts += [sdk.Mount(str(src), guest, read_only=ro) for src, guest, ro in b.mounts]
        return mounts

    def _plant_honey(self, state: StateDir, guard: GuardInputs) -> None:
        """The honeytoken files in the agent's home, written through exec (argv, no shell parsing of them)."""
        if not guard.honey:
            return
        script = (
            'umask 077; for p in "$@"; do f="$HOME/${p%%=*}"; mkdir -p "$(dirname "$f")"; '
            'printf %s "${p#*=}" > "$f"; done'
        )
        pairs = [f"{rel}={path.read_text(encoding='utf-8')}" for rel, path in guard.honey.items()]
        r = self._exec(state, ["sh", "-c", script, "sh", *pairs], timeout=30)
        if r.code != 0:
            raise BackendError(f"bottle {state.slug}: could not plant its honeytokens ({r.stderr.strip()[-200:]})")

    def _wait_guard(self, state: StateDir, bundle: Bundle, *, timeout: float) -> None:
        """The guard's mark in run/ and its health endpoint answering on the loopback address (50 ms polls)."""
        deadline = time.monotonic() + timeout
        mark = state.path / "run" / "guard-ready"
        while True:
            if mark.exists() and guard_answers(bundle.url):
                return
            if time.monotonic() > deadline:
                self._fail_guard(state, timeout)
            time.sleep(0.05)

    @staticmethod
    def _fail_guard(state: StateDir, timeout: float) -> None:
        name = bundle_names(state.slug).container
        logs = engine.docker("logs", "--tail", "3", name)
        last = (logs.stdout + logs.stderr).strip().splitlines()[-1:] or ["(no output)"]
        raise BackendError(f"bottle {state.slug}: its guard did not answer within {timeout:.0f}s; it said: {last[0]}")

    def wait_ready(self, *, state: StateDir, timeout: float = 30.0) -> None:
        """The guard answers on its address and the VM's agent runs a command."""
        vm = self._vm_file(state)
        self._wait_guard(state, Bundle(state.slug, str(vm["address"]), int(str(vm["port"]))), timeout=timeout)
        r = self._exec(state, ["true"], timeout=timeout)
        if r.code != 0:
            raise BackendError(f"bottle {state.slug}: the microVM does not run commands ({r.stderr.strip()[-200:]})")

    # -- lifecycle ------------------------------------------------------------------------------
    def stop(self, *, state: StateDir) -> None:
        failures: list[str] = []
        try:
            sdk.Vm().delete(bundle_names(state.slug).machine)
        except BottleError as exc:
            failures.append(str(exc))
        failures += remove_bundle(state.slug)
        if failures:
            raise BackendError(f"stopping {state.slug}: " + "; ".join(failures))

    @staticmethod
    def _vm_file(state: StateDir) -> dict[str, object]:
        try:
            data = json.loads((state.path / VM_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BackendError(f"bottle {state.slug}: {VM_FILE} is missing or unreadable: it never started") from exc
        if not isinstance(data, dict):
            raise BackendError(f"bottle {state.slug}: {VM_FILE} is not an object")
        return data

    def _env(self, state: StateDir, extra: dict[str, str] | None) -> dict[str, str]:
        env = self._vm_file(state).get("env") or {}
        assert isinstance(env, dict)  # noqa: S101 - written by start above
        return {**{str(k): str(v) for k, v in env.items()}, **(extra or {})}

    def _user(self, state: StateDir) -> str:
        user = str(self._vm_file(state).get("user", ""))
        if not re.fullmatch(r"[0-9]{1,10}:[0-9]{1,10}", user):
            raise BackendError(f"bottle {state.slug}: {VM_FILE} names no user to run as")
        return user

    def _running(self, state: StateDir) -> None:
        """exec never boots a stopped machine (connect would): it must be running."""
        name = bundle_names(state.slug).machine
        rows = [m for m in sdk.Vm().list(_labels(state.slug)) if m.name == name]
        if not rows or rows[0].state != "running":
            raise BackendError(f"bottle {state.slug} is not running ({rows[0].state if rows else 'no machine'})")

    def _exec(
        self, state: StateDir, argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None
    ) -> sdk.Exec:
        return sdk.Vm().exec(
            bundle_names(state.slug).machine,
            argv,
            env=self._env(state, env),
            workdir="/workspace",
            user=self._user(state),
            timeout=timeout,
        )

    def exec(
        self,
        *,
        state: StateDir,
        argv: Sequence[str],
        tty: bool,
        interactive: bool,
        workdir: str | None = None,
        env: dict[str, str] | None = None,
    ) -> int:
        if tty:
            raise BackendError(
                "the smolmachines backend has no terminal into the microVM yet (the SDK's exec has no pty): "
                "run with --detach or --headless, follow with `claude-bottle logs`, or use --backend docker"
            )
        self._running(state)
        from claude_bottle.terminal import ScreenFilter

        # Piped input is handed over whole (the SDK writes it to the command's stdin, then closes it).
        stdin = sys.stdin.buffer.read(STDIN_LIMIT + 1) if interactive and sys.stdin is not None else b""
        if len(stdin) > STDIN_LIMIT:
            raise BackendError(f"more than {STDIN_LIMIT // 2**20} MiB on stdin: copy the file into the workspace")

        screen = ScreenFilter() if os.isatty(1) else None

        def sink(kind: str, text: str) -> None:
            data = text.encode("utf-8", "replace")
            os.write(1 if kind == "stdout" else 2, screen.feed(data) if screen else data)

        return sdk.Vm().exec_stream(
            bundle_names(state.slug).machine,
            argv,
            env=self._env(state, env),
            workdir=workdir or "/workspace",
            user=self._user(state),
            sink=sink,
            stdin=stdin,
        )

    def exec_output(self, *, state: StateDir, argv: Sequence[str]) -> tuple[int, str]:
        self._running(state)
        r = self._exec(state, argv, timeout=60)
        return r.code, r.stdout

    def logs(self, *, state: StateDir, follow: bool, sink: Callable[[bytes], None]) -> int:
        """A detached run's output, from the state dir (the agent writes it: read without following links)."""
        path = state.claude_home / RUN_LOG
        offset = 0
        while True:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                fd = -1
            if fd >= 0:
                with os.fdopen(fd, "rb") as f:
                    if stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                        f.seek(offset)
                        while chunk := f.read(65536):
                            sink(chunk)
                            offset += len(chunk)
            if not follow:
                return 0
            if state.slug not in self.statuses():
                return 0
            time.sleep(0.5)

    # -- inventory ------------------------------------------------------------------------------
    def statuses(self) -> dict[str, BottleStatus]:
        """One `Machine.list` and one `docker ps`."""
        ns = namespace()
        # Without the SDK no machine can be listed: the sidecars still are (and show the agent missing).
        listed = sdk.Vm().list(_labels("")) if sdk.installed() else []
        machines = {m.labels.get(SLUG_LABEL, ""): m for m in listed if ours(dict(m.labels), ns)}
        guards = {
            r.labels.get(SLUG_LABEL, ""): r
            for r in engine.ps_rows(f"label={LABEL}.backend={NAME}", f"label={ROLE_LABEL}=sidecars")
            if ours(r.labels, ns) and r.labels.get(ROLE_LABEL) == "sidecars"
        }
        out = {}
        for slug in (set(machines) | set(guards)) - {""}:
            m, g = machines.get(slug), guards.get(slug)
            agent = _STATES.get(m.state, m.state) if m else "missing"
            guard = g.state if g else "missing"
            status = agent if guard in (agent, "running") else f"{agent} (guard {guard})"
            owner = (m.labels if m else g.labels if g else {}).get(f"{LABEL}.owner-pid", "")
            out[slug] = BottleStatus(slug, self.name, status, int(owner) if owner.isdigit() else None)
        return out

    def enumerate_active(self) -> set[str]:
        """Slugs with a machine (one `Machine.list`; none without the SDK). A sidecar without its machine is
        not a live bottle: it is a leftover, reaped by this backend's cleanup."""
        if not sdk.installed():
            return set()
        ns = namespace()
        return {s for m in sdk.Vm().list(_labels("")) if ours(dict(m.labels), ns) and (s := m.labels.get(SLUG_LABEL))}

    def prepare_cleanup(self) -> SmolCleanupPlan:
        return plan_cleanup()

    def cleanup(self, plan: BottleCleanupPlan, *, report: Report) -> list[str]:
        assert isinstance(plan, SmolCleanupPlan)  # noqa: S101 - plans go back to their backend
        return run_cleanup(plan, report)

    def doctor(self, base_images: Sequence[str] = ()) -> list[Check]:
        from claude_bottle.backend.smolmachines.doctor import checks

        return checks()
