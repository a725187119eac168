"""DockerBottleBackend: one Compose project per bottle, driven with `docker compose` v2 (the engine client).

(Over 450 lines, on purpose: it is the whole BottleBackend ABC, for a local and a remote engine, each
method a few lines over its helpers; what is not the ABC lives beside it: compose.py renders the project,
remote.py fills and empties a remote engine's volumes, owners.py hands a normal user's bottle user its
files, cleanup.py plans and removes leftovers, the engine client and the image builder are shared.)"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from claude_bottle import engine
from claude_bottle.backend import (
    BottleBackend,
    BottleCleanupPlan,
    BottlePlan,
    BottleStatus,
    Check,
    Progress,
    PublishedPort,
    Report,
    homecoming,
    manifest_ports,
)
from claude_bottle.backend.docker import owners, remote
from claude_bottle.backend.docker import ports as ports_
from claude_bottle.backend.docker.cleanup import DockerBottleCleanupPlan, plan_from_engine, run_cleanup
from claude_bottle.backend.docker.compose import NetPlan, container_name, project_name, render_compose, verified_binds
from claude_bottle.bottle.state import StateDir, list_state_dirs, now_iso, process_started, write_private
from claude_bottle.engine import pick_subnet, runtimes
from claude_bottle.errors import BackendError, BottleError
from claude_bottle.hostfs.paths import file_identity, verify_mounts
from claude_bottle.hostfs.walk import remove_tree
from claude_bottle.identity import SLUG_LABEL, Identity, namespace, object_labels, owned_by
from claude_bottle.images import builder

if TYPE_CHECKING:
    from claude_bottle.bottle import Bottle
    from claude_bottle.guard_inputs.inputs import GuardInputs

__all__ = ["DockerBottleBackend"]

COMPOSE_FILE = "compose.json"
MOUNTS_FILE = "mounts.json"
SUBNET_ATTEMPTS = 6


def _compose(state: StateDir, *args: str) -> list[str]:
    return engine.compose_argv(project_name(state.slug), state.path / COMPOSE_FILE, state.path, *args)


ANSWER_TIMEOUT = 10.0  # seconds a recorded engine elsewhere has to answer `ls` and `cleanup`


def recorded_engine(state: StateDir) -> engine.Context | None:
    """The engine the bottle was started on (None: started before engines were recorded, or never)."""
    try:
        data = json.loads((state.path / remote.ENGINE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BackendError(f"bottle {state.slug}: its recorded Docker engine is unreadable ({exc})") from exc
    return engine.Context.from_dict(data if isinstance(data, dict) else {})


def _refuse_swappable_binds(bottle: Bottle) -> None:
    """Under gVisor the agent cannot report what the engine mounted (the sandbox numbers its own devices and
    inodes), so no bind may lie where an agent could swap a link in on the way while it starts: inside
    another bottle's writable files. Then nothing but the operator can change what is mounted."""
    own = {"this bottle", f"bottle {bottle.slug}"}
    for src, what in [(bottle.agent_workspace, "the workspace"), *((s, f"mount {g}") for s, g, _ro in bottle.mounts)]:
        who = bottle.paths.roots.holding(src)
        if who is not None and who not in own:
            raise BottleError(
                f'isolation = "gvisor": {what} ({src}) lies in {who}\'s writable files, where its agent could swap '
                "a link in while this bottle starts, and gVisor cannot show what was mounted: move it out, or "
                'use isolation = "container"'
            )


def _labels(slug: str) -> dict[str, str]:
    """What marks a remote bottle's volumes and helpers as its (cleanup selects by these)."""
    return object_labels("docker", slug)


class DockerBottleBackend(BottleBackend):
    name = "docker"
    publishes_ports = True

    def prepare_images(self, *, plan: BottlePlan, progress: Progress) -> dict[str, str]:
        """The bottle's images, built on its engine by the neutral builder (images/builder.py); Compose must
        be able to run them, so a build that will take minutes first checks it is there."""

        def compose_first() -> None:
            if not engine.client("compose", "version", "--short").ok:
                raise BackendError(engine.COMPOSE_HINT)

        with engine.on(self._ctx):
            return builder.prepare(plan.bottle, progress, ctx=self._ctx, before_build=compose_first)

    # -- start -----------------------------------------------------------------------------------
    _ctx: engine.Context | None = None  # the engine of the bottle being planned and started

    def _engine_for(self, bottle: Bottle) -> engine.Context:
        """A bottle goes back to the engine it was started on; a new one to `--context`, else the
        manifest's `context`, else the environment's (DOCKER_HOST, DOCKER_CONTEXT, the CLI's current)."""
        recorded = recorded_engine(bottle.state)
        if recorded is not None:
            return recorded
        return engine.context(bottle.context or bottle.spec.context)

    def plan(self, *, bottle: Bottle) -> BottlePlan:
        """The project it will be, after checking what the manifest names in the engine (its networks):
        before any image is built."""
        ctx = self._ctx = self._engine_for(bottle)
        where = "" if ctx.local else f" on the remote engine {ctx.name} ({ctx.endpoint})"
        if not ctx.local:
            homecoming.refuse_start(bottle.state)
            writable = [guest for _src, guest, ro in bottle.mounts if not ro]
            if writable:
                raise BottleError(
                    f"mount {writable[0]}: a read-write mount of this machine's files cannot reach the engine of "
                    f'{ctx.name} ({ctx.endpoint}): make it read-only (mode = "ro": it is copied in) or use a '
                    "local engine"
                )
        if bottle.agent.ports:
            if not ctx.local:
                raise BottleError(
                    f"ports: the engine of {ctx.name} ({ctx.endpoint}) would publish them on its own loopback, not "
                    "this machine's: remove ports from the agent and reach them with ssh -L, or use a local engine"
                )
            if bottle.spec.egress.engine != "guard":
                raise BottleError('ports need the built-in guard: egress.engine = "guard" (pipelock has no relay)')
            ports_.check_free(manifest_ports(bottle))
        with engine.on(ctx):
            engine.require_networks(bottle.spec.egress.networks, where=where)
            if bottle.spec.isolation == "gvisor":
                runtimes.require_gvisor(where=where)
                _refuse_swappable_binds(bottle)
        return BottlePlan(
            bottle, [f"compose project {project_name(bottle.slug)}{where}: agent sealed behind its guard"]
        )

    def start(self, *, plan: BottlePlan, images: dict[str, str], guard: GuardInputs, progress: Progress) -> None:
        ctx = self._ctx or self._engine_for(plan.bottle)
        write_private(plan.state.path / remote.ENGINE_FILE, json.dumps(ctx.to_dict()) + "\n")
        with engine.on(ctx):
            self._start(plan, images, guard, progress, remote_engine=not ctx.local)

    def _start(
        self, plan: BottlePlan, images: dict[str, str], guard: GuardInputs, progress: Progress, *, remote_engine: bool
    ) -> None:
        b, state = plan.bottle, plan.state
        identity = Identity(b.slug, self.name, os.getpid(), process_started(os.getpid()) or 0.0, now_iso(), namespace())
        run_dir = state.path / "run"
        if b.ids.needs_helper and not remote_engine and (run_dir / "agent").is_dir():
            owners.clear(slug=b.slug, image=images["guard"], labels=_labels(b.slug), paths=[run_dir / "agent"])
        remove_tree(run_dir)  # a stale "firewall-ready" must never be trusted
        if remote_engine:
            self._fill(b, state, images["guard"], guard, progress)
        else:
            run_dir.mkdir()
            run_dir.chmod(0o777)  # root in the net container has no DAC override; the state dir stays 0700
            # The agent's marks: readable by this user even when the bottle user owns them (the state dir
            # around them stays 0700).
            (run_dir / "agent").mkdir(mode=0o755)
            if os.getuid() == 0:
                os.chown(run_dir / "agent", b.ids.agent_uid, b.ids.agent_gid)
            elif b.ids.needs_helper:
                self._hand_over(b, images["guard"])
        progress("starting containers")
        for attempt in range(SUBNET_ATTEMPTS):
            net = NetPlan(pick_subnet())
            doc = render_compose(
                identity=identity,
                bottle=b.spec,
                workspace=b.agent_workspace,
                mounts=b.mounts,
                state_path=state.path,
                agent_image=images["agent"],
                guard_image=images["guard"],
                ids=b.ids,
                net=net,
                guard=guard,
                manifest_file=b.manifest_path,
                protected=b.protected,
                remote=remote_engine,
                runtime=runtimes.gvisor_runtime() if b.spec.isolation == "gvisor" else None,
            )
            write_private(state.path / COMPOSE_FILE, json.dumps(doc, indent=2) + "\n")
            # What the engine must mount, named by device and inode (opened without following a link, so a
            # link swapped in since the paths were checked fails here), for wait_ready to compare.
            agent = doc["services"]["agent"]
            binds = [] if "runtime" in agent else verified_binds(agent, state.path)  # gVisor: see compose.py
            expected = [(v["target"], *file_identity(Path(v["source"]))) for v in binds]
            write_private(state.path / MOUNTS_FILE, json.dumps(expected) + "\n")
            result = engine.docker(
                *_compose(state, "up", "-d", "--no-build", "--pull", "never", "--quiet-pull"), timeout=300
            )
            if result.ok:
                return
            if "overlap" in result.stderr.lower() and attempt + 1 < SUBNET_ATTEMPTS:
                # Another network holds that subnet: clear the partial project and draw again.
                engine.docker(*_compose(state, "down", "--volumes", "--remove-orphans", "--timeout", "1"), timeout=300)
                continue
            engine.check(result, "docker compose up")

    @staticmethod
    def _hand_over(b: Bottle, image: str) -> None:
        """A normal user's bottle whose agent is the bottle user: its tree (when the host just made it), its
        ~/.claude (the host wrote first-run answers) and its run marks, handed to it through the engine."""
        paths = [b.state.claude_home, b.state.path / "run" / "agent"]
        tree = b.agent_workspace
        if b.mode != "mount" and tree.is_dir() and not tree.is_symlink() and tree.stat().st_uid != b.ids.agent_uid:
            paths.insert(0, tree)
        owners.hand_over(
            slug=b.slug, image=image, labels=_labels(b.slug), paths=paths, uid=b.ids.agent_uid, gid=b.ids.agent_gid
        )

    def release_files(self, state: StateDir) -> None:
        """What the bottle user made in the state dir, removed through the engine (a normal user cannot)."""
        record = state.read()
        image = record.images.get("guard")
        if not image or os.getuid() == 0:
            return
        ctx = recorded_engine(state)
        if ctx is not None and not ctx.local:
            return
        paths = [state.path / n for n in ("worktree", "copy", "claude-home")] + [state.path / "run" / "agent"]
        with engine.on(ctx):
            owners.clear(slug=state.slug, image=image, labels=_labels(state.slug), paths=paths)

    @staticmethod
    def _workspace_source(b: Bottle) -> Path:
        """What a remote bottle's workspace volume is filled from: the checkout in worktree mode; else the
        copy its last run brought home, or at first the operator's workspace."""
        if b.mode in ("worktree", "copy"):
            return b.agent_workspace
        home = b.state.home_workspace
        return home if home.is_dir() else b.workspace

    def _fill(self, b: Bottle, state: StateDir, guard_image: str, guard: GuardInputs, progress: Progress) -> None:
        from claude_bottle.bottle.claude_code import HOST_EXIT_FILE

        progress("copying the bottle's files to its engine")
        volumes = remote.volumes_of(
            guard_dir=guard.dir,
            claude_home=state.claude_home,
            workspace=self._workspace_source(b),
            mounts=b.mounts,
            ids=b.ids,
            workspace_extra=((".git/HEAD", f"ref: refs/heads/{b.worktree['branch']}\n".encode()),)
            if b.worktree
            else (),
        )
        remote.fill_volumes(
            slug=b.slug,
            image=guard_image,
            labels=_labels(b.slug),
            volumes=volumes,
            log_files=[guard.audit, guard.requests],
        )
        # The last run's exit code went in with ~/.claude: here it would read as this run's end.
        (state.claude_home / HOST_EXIT_FILE).unlink(missing_ok=True)

    def wait_ready(self, *, state: StateDir, timeout: float = 30.0) -> None:
        ctx = recorded_engine(state)
        with engine.on(ctx):
            if ctx is not None and not ctx.local:
                self._wait_remote(state, timeout)
            else:
                self._wait_local(state, timeout)

    def _wait_remote(self, state: StateDir, timeout: float) -> None:
        """Ready when the agent's own check passes inside the bottle (the network sealed, the guard
        answering: 50 ms polls there, no healthcheck interval), asked through the engine once."""
        argv = engine.exec_argv(
            container_name(state.slug, "agent"),
            ["/usr/local/bin/bottle-wait-guard"],
            env={"BOTTLE_GUARD_WAIT": str(int(timeout))},
        )
        result = engine.docker(*argv, timeout=timeout + 30)
        if not result.ok:
            self._fail_if_dead(state, timed_out=True, timeout=timeout)

    def _wait_local(self, state: StateDir, timeout: float) -> None:
        """Ready when the net container has sealed the namespace and the guard is listening: both leave a
        mark in the state dir's run/ (and the agent's entrypoint its mount report), so this polls the host
        filesystem (no `docker exec`), and looks at the containers only when it is slow, to fail fast if
        one died."""
        run = state.path / "run"
        marks = [run / "firewall-ready", run / "agent" / "mounts"]
        pipelock = (state.path / "guard" / "pipelock.yaml").exists()
        if not pipelock:
            marks.append(run / "guard-ready")
        deadline = time.monotonic() + timeout
        next_look = time.monotonic() + 1.0
        while not all(m.exists() for m in marks):
            now = time.monotonic()
            if now >= next_look or now > deadline:
                self._fail_if_dead(state, timed_out=now > deadline, timeout=timeout)
                next_look = now + 1.0
            time.sleep(0.01)
        self._verify_mounts(state)
        if pipelock:  # pipelock writes no mark: ask from inside, once
            argv = engine.exec_argv(
                container_name(state.slug, "agent"),
                ["/usr/local/bin/bottle-wait-guard"],
                env={"BOTTLE_GUARD_WAIT": str(int(timeout))},
            )
            engine.check(engine.docker(*argv, timeout=timeout + 10), f"waiting for {state.slug}'s guard")

    @staticmethod
    def _verify_mounts(state: StateDir) -> None:
        """The agent's entrypoint reported what the engine mounted before anything of the agent ran; it must
        be what the CLI checked (a link swapped in during start would show as another device or inode)."""
        expected = [(str(t), int(d), int(i)) for t, d, i in json.loads((state.path / MOUNTS_FILE).read_text())]
        mark = state.path / "run" / "agent" / "mounts"
        ids = state.read().agent_ids
        if len(ids) == 2 and ids[0] not in (os.getuid(), 0) and mark.lstat().st_uid != ids[0]:
            # The agent's tree is safe from git on this machine only if what it writes is the bottle user's
            # here too (an engine whose binds map owners, as Docker Desktop's do, would make it the operator's).
            raise BackendError(
                f"bottle {state.slug}: files its agent writes are owned by uid {mark.lstat().st_uid} on this machine, "
                f'not the bottle user ({ids[0]}): this engine does not keep owners; use workspace_mode = "mount" '
                "knowingly, or a Linux engine"
            )
        report = mark.read_text(encoding="utf-8", errors="replace")
        wrong = verify_mounts(report, expected)
        if wrong is not None:
            raise BackendError(
                f"bottle {state.slug}: what the engine mounted at {wrong} is not what was checked (did a "
                "symbolic link appear on the way while it started?): refusing to run it"
            )

    def _fail_if_dead(self, state: StateDir, *, timed_out: bool, timeout: float) -> None:
        names = [container_name(state.slug, s) for s in ("agent", "egress", "net")]
        states = engine.docker("inspect", "--format", "{{.Name}} {{.State.Status}}", *names)
        dead = [ln.split()[0].lstrip("/") for ln in states.stdout.splitlines() if not ln.endswith(" running")]
        if not dead and states.ok and not timed_out:
            return
        logs = engine.docker("logs", "--tail", "3", names[1])
        last = (logs.stdout + logs.stderr).strip().splitlines()[-1:] or ["(no output)"]
        if dead:
            why = f"{', '.join(dead)} exited"
        else:
            why = "containers missing" if not states.ok else f"not ready within {timeout:.0f}s"
        raise BackendError(f"bottle {state.slug} failed to start ({why}); guard said: {last[0]}")

    # -- lifecycle ------------------------------------------------------------------------------
    def stop(self, *, state: StateDir) -> None:
        ctx = recorded_engine(state)
        with engine.on(ctx):
            if ctx is not None and not ctx.local:
                self._stop_remote(state, ctx)
            else:
                self._stop(state)

    PENDING = "files still on engine"  # the preserve reason of a bottle whose files did not come home

    def _stop_remote(self, state: StateDir, ctx: engine.Context) -> None:
        """Stopped first (nothing more is written, and the agent cannot keep the trip home busy), then its
        files brought home, then removed. If they cannot come home, the bottle is still stopped and its
        secrets' volume removed; the volumes holding its work stay, the state dir is preserved, and `pull`
        tries again."""
        self._answers(ctx)  # an engine that is gone says so in seconds
        if (state.path / COMPOSE_FILE).is_file():
            halt = engine.docker(*_compose(state, "stop", "--timeout", "1"), timeout=300)
            engine.check(halt, f"stopping {state.slug}")
        try:
            self.bring_home(state)
        except homecoming.TripCut:
            pass  # preserved by sync: the volumes holding the rest stay
        except BottleError as exc:
            state.preserve(f"{self.PENDING} {ctx.name} ({ctx.endpoint}): `claude-bottle pull {state.slug}` ({exc})")
        kept = remote.DATA_PARTS if homecoming.is_pending(state) or homecoming.is_cut(state) else ()
        self._stop(state)
        remote.remove_volumes(state.slug, [p for p in self._parts(state) if p not in kept])

    @staticmethod
    def _parts(state: StateDir) -> list[str]:
        try:
            doc = json.loads((state.path / COMPOSE_FILE).read_text(encoding="utf-8"))
            names = sorted(doc.get("volumes", {}))
        except (OSError, ValueError, AttributeError):
            names = []
        prefix = remote.volume_name(state.slug, "")
        parts = {n.removeprefix(prefix) for n in names if n.startswith(prefix)}
        return sorted(parts | {"guard", "log", "run", "home", "workspace"})

    def files_elsewhere(self, state: StateDir) -> bool:
        ctx = recorded_engine(state)
        return ctx is not None and not ctx.local

    def bring_home(self, state: StateDir) -> None:
        """A remote bottle's log, requests, transcripts and workspace, brought home now. For a stopped one
        whose files stayed behind (the engine did not answer at its stop), this finishes that stop."""
        ctx = recorded_engine(state)
        if ctx is None or ctx.local:
            return
        record = state.read()
        image = record.images.get("guard")
        if not image:
            return  # never started: nothing there
        mode = (record.manifest.get("agent") or {}).get("workspace_mode")
        workspace = state.path / ("worktree" if record.worktree else "copy" if mode == "copy" else "workspace")
        # After a trip stopped at a budget only the log travels on its own (the rest would stop there again);
        # a stopped bottle's log came home at its stop, so nothing travels, and the reason is the answer.
        cut = homecoming.is_cut(state)
        if cut and record.status != "running":
            raise homecoming.TripCut(state.preserved() or homecoming.CUT)
        with engine.on(ctx):
            try:
                remote.bring_home(
                    state=state, image=image, labels=_labels(state.slug), workspace_home=workspace, work=not cut
                )
            except homecoming.TripCut as exc:
                homecoming.preserve_cut(state, homecoming.TripCut(f"from engine {ctx.name} ({ctx.endpoint}): {exc}"))
                raise
            if record.status != "running" and (state.preserved() or "").startswith(self.PENDING):
                remote.remove_volumes(state.slug, remote.DATA_PARTS)
                state.preserve_path.unlink(missing_ok=True)

    def read_only_paths(self, bottle: Bottle) -> list[str]:
        """On a remote engine nothing is mounted read-only over the workspace: every control path is judged
        when the work comes home."""
        return [] if not (self._ctx or self._engine_for(bottle)).local else list(bottle.protected)

    def policy_changed(self, state: StateDir) -> None:
        """A remote guard reads its files from a volume: rewrite them there (locally it mounts them)."""
        ctx = recorded_engine(state)
        if ctx is None or ctx.local:
            return
        from claude_bottle.bottle import Bottle
        from claude_bottle.guard_inputs.files import GuardFiles

        record = state.read()
        ids = Bottle.recorded(state).ids
        with engine.on(ctx):
            remote.push_guard_files(
                slug=state.slug,
                image=record.images["guard"],
                labels=_labels(state.slug),
                guard_dir=GuardFiles(state).dir,
                ids=ids,
            )

    def _stop(self, state: StateDir) -> None:
        ports_.remove(state)
        if (state.path / COMPOSE_FILE).is_file():
            down = engine.docker(
                *_compose(state, "down", "--volumes", "--remove-orphans", "--timeout", "1"), timeout=300
            )
            engine.check(down, f"stopping {state.slug}")
            return
        # No compose file (a start interrupted before writing it): remove by label.
        ids = [r.id for r in engine.ps_rows(f"label={SLUG_LABEL}={state.slug}")]
        if ids:
            engine.check(engine.docker("rm", "-f", *ids), "docker rm")

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
        ctx = recorded_engine(state)
        local = ctx is None or ctx.local
        if not (interactive and local and (state.read().manifest.get("bottle") or {}).get("isolation") == "gvisor"):
            cmd = engine.exec_argv(
                container_name(state.slug, "agent"), argv, tty=tty, interactive=interactive, workdir=workdir, env=env
            )
            with engine.on(ctx):
                return engine.interactive(cmd)
        return self._exec_gvisor(state, argv, tty=tty, workdir=workdir, env=env)

    @staticmethod
    def _exec_gvisor(
        state: StateDir, argv: Sequence[str], *, tty: bool, workdir: str | None, env: dict[str, str] | None
    ) -> int:
        """runsc 0.0~20221219's `docker exec -i` does not return when its process ends, or its container
        stops, while its input stays open (docs/design/isolation.md). So the command says it ended in a mark
        of its own (the agent's marks: run/agent on the host), and the CLI ends the client when the mark
        appears or the container stops. The agent can write that mark: it can end its own session, no more."""
        import secrets

        mark = secrets.token_hex(8)
        path = state.path / "run" / "agent" / f"exec-{mark}"
        wrapped = ["sh", "-c", 'm=$1; shift; "$@"; rc=$?; echo $rc > "/bottle-run/agent/exec-$m"; exit $rc']
        agent = container_name(state.slug, "agent")
        cmd = engine.exec_argv(agent, [*wrapped, "bottle-exec", mark, *argv], tty=tty, interactive=True,
                               workdir=workdir, env=env)  # fmt: skip
        asked = [0.0]

        def done() -> bool:
            if path.exists():
                return True
            now = time.monotonic()
            if now - asked[0] < 1.0:
                return False
            asked[0] = now
            r = engine.docker("inspect", "--format", "{{.State.Running}}", agent, timeout=10)
            return r.stdout.strip() != "true"  # stopped, or gone (`stop` removes it): over either way

        rc = engine.interactive(cmd, done=done)
        try:
            text = path.read_text(encoding="ascii", errors="replace").strip()[:4]
        except OSError:
            return rc
        return int(text) if text.isascii() and text.isdigit() else rc

    def publish_ports(self, *, state: StateDir, ports: Sequence[PublishedPort]) -> None:
        if not (state.path / COMPOSE_FILE).is_file():
            raise BottleError(f"{state.slug} is not running: resume it first")
        with engine.on(recorded_engine(state)):
            ports_.publish(state, ports, compose_file=COMPOSE_FILE)

    def published_ports(self, *, state: StateDir) -> list[PublishedPort]:
        with engine.on(recorded_engine(state)):
            return ports_.published(state.slug)

    def exec_output(self, *, state: StateDir, argv: Sequence[str]) -> tuple[int, str]:
        with engine.on(recorded_engine(state)):
            result = engine.docker(*engine.exec_argv(container_name(state.slug, "agent"), argv), timeout=60)
        return result.returncode, result.stdout

    def logs(self, *, state: StateDir, follow: bool, sink: Callable[[bytes], None]) -> int:
        with engine.on(recorded_engine(state)):
            return engine.to_sink(_compose(state, "logs", "--no-color", *(["--follow"] if follow else [])), sink)

    # -- inventory ------------------------------------------------------------------------------
    @staticmethod
    def _engines() -> list[tuple[engine.Context | None, list[str]]]:
        """The environment's engine (None), then every other engine a bottle here was started on, with
        the slugs recorded on it: `ls` and `cleanup` visit each."""
        here = engine.context()
        others: dict[tuple[str, str], tuple[engine.Context, list[str]]] = {}
        for state in list_state_dirs():
            try:
                ctx = recorded_engine(state)
            except BackendError:
                continue
            if ctx is not None and ctx.endpoint != here.endpoint:
                others.setdefault((ctx.name, ctx.endpoint), (ctx, []))[1].append(state.slug)
        return [(None, []), *(others[k] for k in sorted(others))]

    @staticmethod
    def _not_answering(ctx: engine.Context, slugs: Sequence[str]) -> str:
        names = ", ".join(slugs)
        return f"engine {ctx.name} ({ctx.endpoint}) does not answer: its bottles ({names}) are left as they are"

    @staticmethod
    def _answers(ctx: engine.Context | None) -> None:
        """A recorded engine elsewhere is asked once, briefly, before the listings: one that is down or
        unreachable costs `ls` and `cleanup` seconds, not the listings' minutes."""
        if ctx is not None:
            probe = engine.docker("version", "--format", "{{.Server.APIVersion}}", timeout=ANSWER_TIMEOUT)
            engine.check(probe, f"asking engine {ctx.name}")

    def statuses(self) -> dict[str, BottleStatus]:
        result: dict[str, BottleStatus] = {}
        for ctx, slugs in self._engines():
            try:
                with engine.on(ctx):
                    self._answers(ctx)
                    result.update(self._statuses_here())
            except BackendError:
                if ctx is None:
                    raise
                for slug in slugs:
                    why = f"unknown (engine {ctx.name} at {ctx.endpoint} does not answer)"
                    result[slug] = BottleStatus(slug, self.name, why, None, self._not_answering(ctx, slugs))
        return result

    def _statuses_here(self) -> dict[str, BottleStatus]:
        by_slug: dict[str, dict[str, str]] = {}
        ns = namespace()
        for row in engine.ps_rows(f"label=claude-bottle.backend={self.name}"):
            slug = row.labels.get(SLUG_LABEL)
            if not slug or not owned_by(row.labels, ns) or row.labels.get(remote.HELPER_LABEL):
                continue
            entry = by_slug.setdefault(slug, {"owner": row.labels.get("claude-bottle.owner-pid", "")})
            service = row.labels.get("com.docker.compose.service") or row.name.rsplit("-", 1)[-1]
            entry[service] = row.state
            if service == ports_.SERVICE and row.state == "running":
                entry["ports"] = row.labels.get(ports_.PORTS_LABEL, "")
        result = {}
        for slug, e in by_slug.items():
            agent, guard = e.get("agent", "missing"), e.get("egress", "missing")
            status = agent if guard in (agent, "running") else f"{agent} (guard {guard})"
            owner = int(e["owner"]) if e["owner"].isdigit() else None
            published = tuple(ports_.decode(e.get("ports", "")))
            result[slug] = BottleStatus(slug, self.name, status, owner, ports=published)
        return result

    def prepare_cleanup(self) -> DockerBottleCleanupPlan:
        from claude_bottle.backend import enumerate_active_bottles

        ns = namespace()
        others, warnings = enumerate_active_bottles(skip=self.name)
        live: set[str] = set()
        for active in others.values():
            live |= active
        found: list[tuple[engine.Context | None, DockerBottleCleanupPlan]] = []
        rows = {}
        for ctx, slugs in self._engines():
            try:
                with engine.on(ctx):
                    self._answers(ctx)
                    rows[ctx] = (
                        engine.compose_ls(),
                        engine.ps_rows(f"name={ns}-"),  # the name filter narrows; the labels decide
                        engine.network_rows(f"name={ns}-"),
                        engine.volume_rows(f"name={ns}-"),
                    )
            except BackendError:
                if ctx is None:
                    raise
                warnings.append(self._not_answering(ctx, slugs))
                live |= set(slugs)  # nothing of theirs can be judged: their state dirs are kept
                continue
            live |= {
                slug
                for r in rows[ctx][1]
                if (slug := r.labels.get(SLUG_LABEL))
                and owned_by(r.labels, ns)
                and not r.labels.get(remote.HELPER_LABEL)
            }
        for ctx, (projects, containers, networks, volumes) in rows.items():
            sub = plan_from_engine(
                projects=projects,
                containers=containers,
                networks=networks,
                volumes=volumes,
                live=live,
                namespace=ns,
                with_state=ctx is None,
            )
            found.append((ctx, sub))
        plan = next(p for c, p in found if c is None)
        plan.engines = [(c, p) for c, p in found if c is not None]
        plan.warnings = warnings
        return plan

    def cleanup(self, plan: BottleCleanupPlan, *, report: Report) -> list[str]:
        assert isinstance(plan, DockerBottleCleanupPlan)  # noqa: S101 - plans go back to their backend
        failures = []
        for ctx, sub in plan.engines:
            with engine.on(ctx):
                failures += run_cleanup(sub, report, bring_home=self._bring_home_before_removal)
        return failures + run_cleanup(plan, report, bring_home=self._bring_home_before_removal)

    def _bring_home_before_removal(self, slug: str, report: Report) -> None:
        """A remote bottle's volumes are about to go: what the operator keeps (its log, transcripts and
        workspace) comes home first, into its state dir, if it has one."""
        try:
            state = StateDir(slug)
            if state.exists():
                self.bring_home(state)
                report(f"brought {slug}'s log, transcripts and workspace home")
        except (BottleError, OSError) as exc:
            report(f"could not bring {slug}'s files home ({exc}): its volumes are kept")
            raise

    def doctor(self, base_images: Sequence[str] = ()) -> list[Check]:
        from claude_bottle.images.specs import GUARD_BASE_IMAGE
        from claude_bottle.manifest import BottleSpec

        checks = []
        docker_bin = shutil.which("docker")
        checks.append(
            Check(
                "docker CLI",
                bool(docker_bin),
                docker_bin or "not on PATH",
                "install Docker (./scripts/setup does it on Debian)",
            )
        )
        if not docker_bin:
            return checks
        try:
            ver = engine.docker("version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})", timeout=20)
            engine_ok = ver.ok and ver.stdout.strip() != ""
        except BackendError:
            engine_ok, ver = False, None
        ctx = engine.context()
        checks.append(
            Check(
                "context",
                True,
                f"{ctx.name} ({ctx.endpoint}){'' if ctx.local else ': a remote engine (files travel as volumes)'}",
            )
        )
        checks.append(
            Check(
                "engine",
                engine_ok,
                ver.stdout.strip() if engine_ok and ver else engine.engine_hint(),
                "start dockerd (./scripts/setup) or set DOCKER_HOST",
            )
        )
        # The Compose plugin answers its version without an engine.
        comp = engine.client("compose", "version", "--short")
        v = comp.stdout.strip().lstrip("v")
        compose_ok = comp.ok and v.split(".")[0].isdigit() and int(v.split(".")[0]) >= 2
        checks.append(
            Check(
                "compose v2",
                compose_ok,
                v or "missing",
                "run ./scripts/setup as root (it installs Compose v2 for every user), or install Debian's "
                "docker-compose-plugin",
            )
        )
        if engine_ok:
            wanted = list(dict.fromkeys([*(base_images or [BottleSpec().base_image]), GUARD_BASE_IMAGE]))
            for image in wanted:
                present = bool(engine.image_ids([image]))
                checks.append(
                    Check(
                        f"image {image}",
                        present,
                        "present" if present else "missing",
                        f"docker pull {image}, or ./scripts/setup to build it from Debian packages",
                    )
                )
            # Optional (isolation = "gvisor" only): doctor fails on these only for a manifest that asks for it.
            checks += [Check(*row) for row in runtimes.gvisor_report(wanted[0])]
        return checks
