"""A second Docker engine that does not see this machine's files: Docker-in-Docker built from Debian
packages (`docker.io`, `iptables`), on a network the caller made, answering on `tcp://IP:2375`.

`--privileged` fails on this machine kind (its capability bounding set lacks CAP_SYS_RESOURCE), so the
engine gets every capability but that one, no seccomp, AppArmor or masked paths, and the host's cgroups.
Its storage is a volume of its own (overlay2 works there, and is far faster than vfs). Everything made here
is labelled `claude-bottle-test=1` and removed by `close()`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE = "cbtest-dind:1"
BASE = "debian:bookworm-slim"
TEST_LABEL = "claude-bottle-test=1"
GVISOR = "claude-bottle-gvisor"
GVISOR_ARGS = ["--platform=ptrace", "--network=host"]
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
FLAGS = [
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined", "--cgroupns", "host",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
]  # fmt: skip
DOCKERFILE = f"""FROM {BASE}
COPY ca.crt /usr/local/share/ca-certificates/host-ca.crt
RUN apt-get update && apt-get install -y --no-install-recommends docker.io iptables ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
"""


def docker(*args: str, host: str | None = None, timeout: float = 300, check: bool = True,
           stdin: int | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {**os.environ}
    env.pop("DOCKER_CONTEXT", None)
    if host:
        env["DOCKER_HOST"] = host
    else:
        env.pop("DOCKER_HOST", None)
    return subprocess.run(
        ["docker", *args], env=env, capture_output=True, text=True, timeout=timeout, check=check, stdin=stdin
    )


def build_image() -> None:
    """The engine's image, once per machine (a label marks it as the tests')."""
    if docker("image", "inspect", IMAGE, check=False).returncode == 0:
        return
    with tempfile.TemporaryDirectory() as ctx:
        (Path(ctx) / "Dockerfile").write_text(DOCKERFILE)
        ca = CA_BUNDLE.read_bytes() if CA_BUNDLE.is_file() else b""
        (Path(ctx) / "ca.crt").write_bytes(ca)
        docker("build", "-q", "--label", TEST_LABEL, "-t", IMAGE, ctx, timeout=900)


@dataclass
class Dind:
    name: str
    network: str
    volume: str
    ip: str
    config: Path | None = None  # its daemon.json (gVisor's runtime), on this machine

    @property
    def host(self) -> str:
        return f"tcp://{self.ip}:2375"

    def docker(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return docker(*args, host=self.host, timeout=timeout, check=check)

    def load(self, images: Sequence[str]) -> None:
        """Images from this machine's engine into this one (there is no registry here)."""
        env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
        save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE, env=env)
        try:
            load = subprocess.run(
                ["docker", "load", "-q"],
                stdin=save.stdout,
                capture_output=True,
                text=True,
                env={**env, "DOCKER_HOST": self.host},
                timeout=900,
                check=False,
            )
        finally:
            if save.stdout is not None:
                save.stdout.close()
            save.wait()
        if load.returncode != 0 or save.returncode != 0:
            raise RuntimeError(f"loading {images} into {self.name} failed: {load.stderr.strip()}")

    def build(self, tag: str, files: dict[str, bytes]) -> None:
        """An image built on this engine from a few files (the context travels through the API)."""
        with tempfile.TemporaryDirectory() as ctx:
            for name, data in files.items():
                (Path(ctx) / name).write_bytes(data)
            self.docker("build", "-q", "--label", TEST_LABEL, "-t", tag, ctx, timeout=600)

    def close(self) -> None:
        docker("rm", "-f", "-v", self.name, check=False)
        docker("volume", "rm", "-f", self.volume, check=False)
        docker("network", "rm", self.network, check=False)
        if self.config is not None:
            shutil.rmtree(self.config.parent, ignore_errors=True)


def start(prefix: str = "cbtest-dind") -> Dind:
    """A fresh engine on a fresh network, answering; `close()` removes all of it."""
    build_image()
    tag = secrets.token_hex(3)
    d = Dind(f"{prefix}-{tag}", f"{prefix}-net-{tag}", f"{prefix}-lib-{tag}", "")
    docker("network", "create", "--label", TEST_LABEL, d.network)
    docker("volume", "create", "--label", TEST_LABEL, d.volume)
    # This machine's runsc, registered in the remote engine as scripts/setup registers it here (issue 23).
    runsc = shutil.which("runsc")
    gvisor: list[str] = []
    if runsc is not None:
        conf = {"runtimes": {GVISOR: {"path": "/usr/local/bin/runsc", "runtimeArgs": GVISOR_ARGS}}}
        d.config = Path(tempfile.mkdtemp(prefix="cbtest-dind-conf-")) / "daemon.json"
        d.config.write_text(json.dumps(conf))
        gvisor = ["-v", f"{runsc}:/usr/local/bin/runsc:ro", "-v", f"{d.config}:/etc/docker/daemon.json:ro"]
    try:
        docker(
            "run", "-d", "--name", d.name, "--label", TEST_LABEL, "--network", d.network, *FLAGS, *gvisor,
            "-v", f"{d.volume}:/var/lib/docker",
            IMAGE, "dockerd", "-H", "tcp://0.0.0.0:2375", "--tls=false", "--storage-driver", "overlay2",
        )  # fmt: skip
        d.ip = docker(
            "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", d.name
        ).stdout.strip()
        deadline = time.monotonic() + 60
        while d.docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=20).returncode != 0:
            if time.monotonic() > deadline:
                logs = docker("logs", "--tail", "5", d.name, check=False)
                raise RuntimeError(f"the Docker-in-Docker engine did not answer: {logs.stderr.strip()}")
            time.sleep(0.2)
    except BaseException:
        d.close()
        raise
    return d
