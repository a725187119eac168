"""KubernetesBottleBackend (`--backend kubernetes`): one Pod per bottle through `kubectl`, against the
current kubeconfig context (or CLAUDE_BOTTLE_KUBE_CONTEXT). The objects are rendered in render.py; this
applies, waits, copies and removes them. See docs/design/beyond-one-machine.md for what the cluster must
provide (a CNI that enforces NetworkPolicy, a storage class, a registry it pulls from, a namespace that
admits an init container with NET_ADMIN) and for the limits.

Images are built by the Docker backend on this machine and pushed to CLAUDE_BOTTLE_REGISTRY, which the
cluster must be able to pull from. The workspace and `~/.claude` travel into the bottle's claim through
`kubectl exec` (a tar stream) while the Pod waits in its `seed` init container. What comes home (the audit
log, the capability requests, the transcripts) is read at a stop from the claim, after the bottle's Pod is
gone, by a helper Pod of its own (render_helper: read-only, non-root, no network); while the bottle runs,
only the log and the requests, from the guard's container. Each tar streams into the unpacker within its
budgets (homecoming.py); a trip that fails leaves the bottle preserved, and `pull` finishes it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from claude_bottle import process
from claude_bottle.backend import (
    BottleBackend,
    BottleCleanupPlan,
    BottlePlan,
    BottleStatus,
    Check,
    Progress,
    Report,
    homecoming,
)
from claude_bottle.backend.kubernetes.render import (
    HELPER_LABEL,
    HOME_PARTS,
    Names,
    as_list,
    render_helper,
    render_objects,
)
from claude_bottle.backend.kubernetes.rows import ObjectRow, PodRow, ServerVersion
from claude_bottle.bottle.state import StateDir, now_iso, process_started
from claude_bottle.errors import BackendError, BottleError
from claude_bottle.identity import SLUG_LABEL, Identity, namespace, object_labels
from claude_bottle.images import builder

if TYPE_CHECKING:
    from claude_bottle.bottle import Bottle
    from claude_bottle.guard_inputs.inputs import GuardInputs

__all__ = ["KubernetesBottleBackend", "kubectl_argv"]

KINDS = "pod,networkpolicy,secret,configmap"  # what a stop removes (the claim holds the state: kept)
TRANSFER_TIMEOUT = 1800.0  # one tar stream home, start to end
HELPER_READY = 120.0  # for the helper Pod to run (the claim detached from the bottle's node, attached to its)
PENDING = f"{homecoming.PENDING} cluster"  # the preserve reason of a bottle whose files did not come home


def kubectl_argv(*args: str) -> list[str]:
    ctx = os.environ.get("CLAUDE_BOTTLE_KUBE_CONTEXT")
    return ["kubectl", *(["--context", ctx] if ctx else []), *args]


def kubectl(*args: str, input: str | None = None, timeout: float = 120) -> process.Result:
    return process.run(kubectl_argv(*args), input=input, timeout=timeout)


def _names(slug: str) -> Names:
    return Names(f"{namespace()}-{slug}")


def _selector(slug: str | None = None) -> str:
    return ",".join(f"{k}={v}" for k, v in object_labels("kubernetes", slug or "").items())


def _tar(root: Path, arcname: str) -> bytes:
    """A folder as a tar stream (links kept as links, never followed)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(root, arcname=arcname, recursive=True)
    return buf.getvalue()


class KubernetesPlan(BottleCleanupPlan):
    def __init__(self, objects: list[tuple[str, str, str]], kept: list[str]) -> None:
        self.objects = objects  # (kind, name, slug)
        self.kept = kept

    def lines(self) -> list[str]:
        out = [f"--- kubernetes ({os.environ.get('CLAUDE_BOTTLE_KUBE_CONTEXT') or 'current context'})"]
        out += [f"{kind} {name} (bottle {slug}) -> removed" for kind, name, slug in self.objects]
        out += [f"kept: bottle {slug} (running)" for slug in self.kept]
        return out if len(out) > 1 else []

    def empty(self) -> bool:
        return not self.objects


class KubernetesBottleBackend(BottleBackend):
    name = "kubernetes"
    workspace_modes = ("copy", "mount")  # the workspace goes into the claim by a tar stream either way

    def plan(self, *, bottle: Bottle) -> BottlePlan:
        if shutil.which("kubectl") is None:
            raise BottleError("the kubernetes backend needs kubectl on PATH (and a kubeconfig context)")
        if not os.environ.get("CLAUDE_BOTTLE_REGISTRY"):
            raise BottleError(
                "the kubernetes backend needs a registry the cluster pulls from: set CLAUDE_BOTTLE_REGISTRY "
                "(the bottle's images are pushed there)"
            )
        if bottle.worktree or bottle.spec.egress.engine == "pipelock" or bottle.spec.egress.networks:
            raise BottleError(
                "the kubernetes backend runs the guard's own engine, without egress.networks or worktree mode"
            )
        if bottle.spec.isolation == "gvisor":
            rc = bottle.spec.runtime_class
            if not kubectl("get", "runtimeclass", rc, "-o", "name", timeout=30).ok:
                raise BottleError(
                    f'isolation = "gvisor": the cluster has no RuntimeClass {rc!r} (kubectl get runtimeclass): '
                    "install gVisor's on its nodes, or name the one it has in bottles.*.runtime_class"
                )
        homecoming.refuse_start(bottle.state)
        return BottlePlan(bottle, [f"pod {_names(bottle.slug).pod}: agent sealed behind its guard sidecar"])

    def prepare_images(self, *, plan: BottlePlan, progress: Progress) -> dict[str, str]:
        """The images from the neutral builder (built here), pushed to the registry the cluster pulls from."""
        local = builder.prepare(plan.bottle, progress)
        return builder.push(local, os.environ["CLAUDE_BOTTLE_REGISTRY"], progress)

    def start(self, *, plan: BottlePlan, images: dict[str, str], guard: GuardInputs, progress: Progress) -> None:
        from claude_bottle.guard_inputs.files import GuardFiles

        b, state = plan.bottle, plan.state
        identity = Identity(b.slug, self.name, os.getpid(), process_started(os.getpid()) or 0.0, now_iso(), namespace())
        files = GuardFiles(state)
        honey = {rel: src.read_text(encoding="utf-8") for rel, src in guard.honey.items()}
        objects = render_objects(
            identity=identity,
            spec=b.spec,
            ids=b.ids,
            guard=guard,
            agent_image=images["agent"],
            guard_image=images["guard"],
            policy=files.policy.read_text(encoding="utf-8"),
            secrets=files.secrets.read_text(encoding="utf-8"),
            honey=honey,
            storage_class=os.environ.get("CLAUDE_BOTTLE_STORAGE_CLASS"),
        )
        progress("applying the bottle's objects")
        process.check(kubectl("apply", "-f", "-", input=as_list(objects), timeout=120), "kubectl apply")
        names = _names(b.slug)
        progress("copying the workspace in")
        self._wait_for(f"pod/{names.pod}", "seed")
        seed = _tar(b.agent_workspace, "workspace") + b""
        self._untar(names.pod, "seed", "/state", seed)
        self._untar(names.pod, "seed", "/state", _tar(state.claude_home, "claude-home"))
        process.check(kubectl("exec", names.pod, "-c", "seed", "--", "touch", "/state/.seeded"), "seeding the bottle")

    def _wait_for(self, pod: str, *containers: str, timeout: float = 300) -> None:
        """Until each of `containers` of the Pod runs (an init container waiting for its seed, a helper's)."""
        deadline = time.monotonic() + timeout
        wanted = set(containers)
        while True:
            got = kubectl("get", pod, "-o", "json", timeout=30)
            if got.ok and wanted <= PodRow.one(got.stdout, f"kubectl get {pod}").running:
                return
            if time.monotonic() > deadline:
                names = ", ".join(sorted(wanted))
                raise BackendError(f"{pod}: its {names} container(s) did not start within {timeout:.0f}s")
            time.sleep(0.5)

    def _untar(self, pod: str, container: str, dest: str, data: bytes) -> None:
        proc = process.capture(
            kubectl_argv("exec", "-i", pod, "-c", container, "--", "tar", "-xf", "-", "-C", dest),
            input=data,
            timeout=1800,
        )  # (a hang is process.TimedOut: a BackendError, one line, and the start is rolled back)
        if not proc.ok:
            raise BackendError(f"copying into {pod} failed: {proc.last_error_line()[-300:]}")

    def policy_changed(self, state: StateDir) -> None:
        """The policy ConfigMap rewritten from the local policy file; the kubelet refreshes the guard's
        copy (within its sync period, about a minute), which the guard then re-reads."""
        from claude_bottle.guard_inputs.files import GuardFiles

        patch = json.dumps({"data": {"policy.json": GuardFiles(state).policy.read_text(encoding="utf-8")}})
        result = kubectl("patch", "configmap", _names(state.slug).policy, "--type", "merge", "-p", patch)
        process.check(result, f"updating the policy of {state.slug}")

    def wait_ready(self, *, state: StateDir, timeout: float = 30.0) -> None:
        names = _names(state.slug)
        # The engine tells when the Pod is ready (the guard's probe passed): no polling from here.
        result = kubectl("wait", "--for=condition=Ready", f"pod/{names.pod}", f"--timeout={int(timeout * 10)}s",
                         timeout=timeout * 10 + 30)  # fmt: skip
        process.check(result, f"waiting for pod {names.pod}")

    def _context(self) -> str:
        return os.environ.get("CLAUDE_BOTTLE_KUBE_CONTEXT") or "the current context"

    def stop(self, *, state: StateDir) -> None:
        """The bottle's Pod (and its policy, Secret, config maps) deleted first, whatever follows: the agent
        stops, and nothing it does can hold the stop or the trip home. Then, if it ran (or an earlier trip
        failed), what comes home is read from its claim by a helper Pod. If that fails the bottle is still
        stopped: its state dir is preserved with the reason, the claim keeps the files, and `pull` (or
        another stop) tries again."""
        deleted = kubectl("delete", KINDS, "-l", _selector(state.slug), "--ignore-not-found", "--wait=true",
                          "-o", "name")  # fmt: skip
        process.check(deleted, f"removing bottle {state.slug}")
        ran = f"pod/{_names(state.slug).pod}" in deleted.stdout.split()
        if not (ran or homecoming.is_pending(state)):
            return
        try:
            self._from_claim(state)
        except homecoming.TripCut:
            pass  # preserved, with its reason
        except (BottleError, OSError) as exc:
            why = " ".join(str(exc).split())
            state.preserve(f"{PENDING} ({self._context()}): `claude-bottle pull {state.slug}` ({why})")

    def bring_home(self, state: StateDir) -> None:
        """While the bottle runs, its log and requests from the guard's container (the agent cannot touch
        that container or what it reads). Stopped, the trip its stop could not finish, from the claim; after
        a trip that stopped at a budget, nothing travels on its own (the reason is the answer)."""
        if state.read().status == "running":
            self._log_from_guard(state)
        elif homecoming.is_cut(state):
            raise homecoming.TripCut(state.preserved() or homecoming.CUT)
        elif homecoming.is_pending(state):
            self._from_claim(state)

    def _log_from_guard(self, state: StateDir) -> None:
        argv = kubectl_argv("exec", _names(state.slug).pod, "-c", "guard", "--",
                            "tar", "-c", "-f", "-", "-C", "/var/log/claude-bottle", ".")  # fmt: skip
        home = homecoming.Homecoming(state, where="in the guard's container")
        with home.trip() as trip:
            result = process.stream(argv, take=trip.read, timeout=TRANSFER_TIMEOUT)
            if home.arrived(trip, result, f"bringing {state.slug}'s log home", ok=(0, 1)):
                home.take_log(trip.dest)
        try:
            home.finish(work=False)
        except homecoming.TripCut as exc:
            homecoming.preserve_cut(state, exc)
            raise

    def _from_claim(self, state: StateDir) -> None:
        """The log, then (unless an earlier trip stopped at a budget) the transcripts, from the claim through
        a helper Pod (render_helper), removed in every case. On success a pending trip is done; a trip that
        stops at a budget preserves the bottle (TripCut); any other failure is a one-line BackendError."""
        from claude_bottle.bottle import Bottle

        record = state.read()
        image = record.images.get("agent")
        if not image:
            return  # never started: nothing there
        names = _names(state.slug)
        identity = Identity(state.slug, self.name, os.getpid(), process_started(os.getpid()) or 0.0, now_iso(),
                            namespace())  # fmt: skip
        deadline = int(HELPER_READY + TRANSFER_TIMEOUT * len(HOME_PARTS))
        helper = render_helper(identity=identity, ids=Bottle.recorded(state).ids, image=image, deadline=deadline)
        cut = homecoming.is_cut(state)
        home = homecoming.Homecoming(state, where=f"on its claim {names.state}")
        try:
            process.check(kubectl("apply", "-f", "-", input=as_list(helper)), f"starting {state.slug}'s helper")
            self._wait_for(f"pod/{names.helper}", *(c for c, _ in HOME_PARTS), timeout=HELPER_READY)
            for container, part in HOME_PARTS[:1] if cut else HOME_PARTS:
                if home.stopped:
                    break
                argv = kubectl_argv("exec", names.helper, "-c", container, "--",
                                    "tar", "-c", "--ignore-failed-read", "-f", "-", "-C", "/v", part)  # fmt: skip
                with home.trip() as trip:
                    result = process.stream(argv, take=trip.read, timeout=TRANSFER_TIMEOUT)
                    # GNU tar's 1 is "some files differ" (a file written while it was read): what came is whole.
                    if not home.arrived(trip, result, f"bringing {state.slug}'s {part} home", ok=(0, 1)):
                        continue
                    if part == "log":
                        home.take_log(trip.dest / "log")
                    else:
                        homecoming.put_in_place(trip.dest / part, state.claude_home)
            home.finish(work=not cut)
        except homecoming.TripCut as exc:
            homecoming.preserve_cut(state, exc)
            raise
        finally:
            with contextlib.suppress(BottleError):  # one left behind ends at its deadline; cleanup finds it
                kubectl("delete", "pod,networkpolicy", "-l", f"{_selector(state.slug)},{HELPER_LABEL}=1",
                        "--ignore-not-found", "--wait=false")  # fmt: skip
        if homecoming.is_pending(state):
            state.preserve_path.unlink(missing_ok=True)  # the trip its stop owed is done

    def files_elsewhere(self, state: StateDir) -> bool:
        del state
        return True

    def _exec_argv(self, state: StateDir, argv: Sequence[str], *, tty: bool, interactive: bool,
                   workdir: str | None, env: dict[str, str] | None) -> list[str]:  # fmt: skip
        flags = [*(["-i"] if interactive else []), *(["-t"] if tty else [])]
        inner = list(argv)
        if env:
            inner = ["env", *(f"{k}={v}" for k, v in env.items()), *inner]
        if workdir:
            inner = ["sh", "-c", 'cd "$0" && exec "$@"', workdir, *inner]
        return kubectl_argv("exec", *flags, _names(state.slug).pod, "-c", "agent", "--", *inner)

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
        return process.run_interactive(
            self._exec_argv(state, argv, tty=tty, interactive=interactive, workdir=workdir, env=env)
        )

    def exec_output(self, *, state: StateDir, argv: Sequence[str]) -> tuple[int, str]:
        result = process.run(self._exec_argv(state, argv, tty=False, interactive=False, workdir=None, env=None))
        return result.returncode, result.stdout

    def logs(self, *, state: StateDir, follow: bool, sink: Callable[[bytes], None]) -> int:
        argv = kubectl_argv("logs", *(["-f"] if follow else []), _names(state.slug).pod, "-c", "agent")
        return process.run_to(argv, sink)

    @staticmethod
    def _nothing_to_ask() -> bool:
        """Nothing to ask a cluster about: no bottle of this backend recorded here, and no cluster to ask
        (no kubectl, or no context): then `ls` and `cleanup` never wait on one."""
        from claude_bottle.bottle.state import list_state_dirs

        if any(d.read().backend == "kubernetes" for d in list_state_dirs()):
            return False
        if shutil.which("kubectl") is None:
            return True
        return not (os.environ.get("CLAUDE_BOTTLE_KUBE_CONTEXT") or kubectl("config", "current-context").ok)

    def _pods(self) -> list[PodRow]:
        if self._nothing_to_ask():
            return []
        got = kubectl("get", "pods", "-l", _selector(), "-o", "json", "--request-timeout=10s", timeout=30)
        process.check(got, "kubectl get pods")
        return PodRow.parse(got.stdout)

    def statuses(self) -> dict[str, BottleStatus]:
        out = {}
        for pod in self._pods():
            slug = pod.labels.get(SLUG_LABEL, "")
            if pod.labels.get(HELPER_LABEL) or not slug:
                continue  # a trip home, not the bottle (or nothing of ours)
            phase = pod.phase.lower()
            pid = pod.annotations.get("claude-bottle.owner-pid", "")
            out[slug] = BottleStatus(slug, self.name, phase, int(pid) if pid.isascii() and pid.isdigit() else None)
        return out

    def doctor(self, base_images: Sequence[str] = ()) -> list[Check]:
        binary = shutil.which("kubectl")
        checks = [Check("kubectl", bool(binary), binary or "not on PATH", "install kubectl, or use another backend")]
        if not binary:
            return checks
        ctx = os.environ.get("CLAUDE_BOTTLE_KUBE_CONTEXT") or kubectl("config", "current-context").stdout.strip()
        checks.append(Check("context", bool(ctx), ctx or "none", "kubectl config use-context NAME"))
        if ctx:
            answer = kubectl("version", "-o", "json", "--request-timeout=5s", timeout=15)
            version = ServerVersion.parse(answer.stdout).git_version if answer.ok else ""
            ok = bool(version)
            checks.append(Check("cluster", ok, version if ok else "does not answer",
                                "check the context's server and credentials"))  # fmt: skip
            if ok:
                netpol = kubectl("api-resources", "--api-group=networking.k8s.io", "-o", "name", timeout=15)
                has = "networkpolicies" in netpol.stdout
                checks.append(Check("NetworkPolicy API", has, "present" if has else "missing",
                                    "a CNI that enforces NetworkPolicy is required"))  # fmt: skip
        registry = os.environ.get("CLAUDE_BOTTLE_REGISTRY", "")
        checks.append(Check("registry", bool(registry), registry or "unset",
                            "set CLAUDE_BOTTLE_REGISTRY to a registry the cluster pulls from"))  # fmt: skip
        return checks

    def prepare_cleanup(self) -> KubernetesPlan:
        if self._nothing_to_ask():
            return KubernetesPlan([], [])
        if shutil.which("kubectl") is None:
            raise BottleError("kubectl not on PATH: bottles of this backend are recorded here")
        got = kubectl("get", f"{KINDS},persistentvolumeclaim", "-l", _selector(), "-o", "json", "--request-timeout=10s",
                      timeout=60)  # fmt: skip
        if not got.ok:
            raise BottleError(f"the cluster does not answer ({(got.stderr.strip().splitlines() or ['?'])[-1]})")
        running = {s for s, st in self.statuses().items() if st.status == "running"}
        objects, kept = [], set()
        for item in ObjectRow.parse(got.stdout):
            slug = item.labels.get(SLUG_LABEL, "")
            if slug in running or (item.kind == "PersistentVolumeClaim" and self._owed(slug)):
                kept.add(slug)
                continue
            objects.append((item.kind.lower(), item.name, slug))
        return KubernetesPlan(objects, sorted(kept))

    @staticmethod
    def _owed(slug: str) -> bool:
        """Does the claim hold files that did not all come home (its state dir says so)?"""
        try:
            state = StateDir(slug)
        except BottleError:
            return False
        return state.path.is_dir() and (homecoming.is_pending(state) or homecoming.is_cut(state))

    def cleanup(self, plan: BottleCleanupPlan, *, report: Report) -> list[str]:
        assert isinstance(plan, KubernetesPlan)  # noqa: S101 - plans go back to their backend
        failures = []
        for kind, name, _slug in plan.objects:
            result = kubectl("delete", kind, name, "--ignore-not-found", "--wait=false")
            if result.ok:
                report(f"removed {kind} {name}")
            else:
                why = (result.stderr.strip().splitlines() or ["?"])[-1]
                failures.append(f"{kind} {name}: {why}")
                report(f"failed {kind} {name}: {why}")
        return failures
