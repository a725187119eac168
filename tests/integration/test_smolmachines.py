"""The smolmachines backend on the real engine (issue 12). No VM boots on this machine kind (nested PVM:
see tests/vm/ for the real-VM suite and its measured skip reason), so:

- the sidecar bundle runs for real: the guard in its own container and network, published on its own
  loopback address, answering, refusing and auditing as on Docker; the "VM" is the SDK fake
  (tests/fakesmol) whose exec runs the command on the host with the guest's environment, so its egress
  goes through that real guard exactly as the guest's would;
- cleanup reaps hand-made `<ns>-sidecars-*` / `<ns>-bundle-*` leftovers and keeps a live bottle's;
- the real SDK is asked to boot the real agent image: the start fails within its boot timeout in one line
  naming the cause, and leaves nothing behind (no machine, container, network or state dir).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import NS, TEST_IMAGE, TEST_KEY, Cli, Internet, docker, made_cli

SMOL = {"CLAUDE_BOTTLE_BACKEND": "smolmachines", "FAKE_SMOL_EXEC": "host"}


@pytest.fixture(scope="module")
def vm_cli(tmp_path_factory: pytest.TempPathFactory, internet: Internet) -> Iterator[Cli]:
    with made_cli(tmp_path_factory, internet) as c:
        c.extra_env.update(SMOL)
        yield c


def fake_db(c: Cli) -> dict[str, Any]:
    path = c.home.parent / "fakesmol" / "db.json"
    return json.loads(path.read_text()) if path.exists() else {"machines": {}}


def objects(slug: str) -> tuple[list[str], list[str]]:
    """The engine's containers and networks labelled with this bottle's slug."""
    cs = docker("ps", "-a", "--filter", f"label=claude-bottle.slug={slug}", "--format", "{{.Names}}").stdout.split()
    ns = docker("network", "ls", "--filter", f"label=claude-bottle.slug={slug}", "--format", "{{.Name}}").stdout.split()
    return cs, ns


def test_the_guard_in_its_bundle_answers_refuses_and_audits(vm_cli: Cli, internet: Internet) -> None:
    slug = vm_cli.start()
    try:
        vm = json.loads((vm_cli.states / slug / "vm.json").read_text())
        addr, url = vm["address"], f"http://{vm['address']}:{vm['port']}"
        (machine,) = fake_db(vm_cli)["machines"].values()
        assert machine["config"]["resources"]["allow_cidrs"] == [f"{addr}/32"]
        # Published on its own loopback address, and only there.
        ports = docker("port", f"{NS}-sidecars-{slug}").stdout.split()
        assert ports == ["3128/tcp", "->", f"{addr}:3128"], ports
        assert vm_cli.ls()[slug]["status"] == "running"
        # What the guest does goes through the guard: allowed, refused with its reason, both on record.
        rc, out = vm_cli.sh(slug, "curl -sS -m 10 http://allowed.test/hello")
        assert rc == 0, out
        assert any(r["path"] == "/hello" for r in internet.requests("allowed"))
        vm_cli.wait_line(slug, decision="allow", host="allowed.test")
        rc, out = vm_cli.sh(slug, "curl -sS -m 10 -o /dev/null -w '%{http_code}' http://forbidden.test/")
        assert out.strip() == "403", out
        deny = vm_cli.wait_line(slug, decision="deny", host="forbidden.test")
        assert deny["reason"]
        # The credential route: the guest holds a placeholder; the upstream sees the real key.
        rc, out = vm_cli.sh(
            slug,
            'curl -sS -m 10 -H "x-api-key: $ANTHROPIC_API_KEY" -H "content-type: application/json" '
            '-d \'{"model":"m","max_tokens":1,"messages":[]}\' "$ANTHROPIC_BASE_URL/v1/messages"',
        )
        assert rc == 0, out
        seen = internet.requests("anthropic")[-1]
        assert {k.lower(): v for k, v in seen["headers"].items()}["x-api-key"] == TEST_KEY
        assert TEST_KEY not in json.dumps(fake_db(vm_cli))  # never handed to the VM
        # Another loopback address is not the guard.
        rc, _ = vm_cli.sh(slug, "curl -sS -m 5 --noproxy '*' http://127.0.0.1:3128/__bottle/health")
        assert rc != 0
        assert url.startswith("http://127.")
    finally:
        vm_cli.run("stop", slug, "--rm")
    assert objects(slug) == ([], [])
    assert fake_db(vm_cli)["machines"] == {}


def test_a_neighbour_on_the_bundle_network_is_not_a_client(vm_cli: Cli) -> None:
    """Only the bundle's gateway (where published connections arrive) is admitted: a container that
    joins the bundle network and calls the guard's own address gets nothing."""
    slug = vm_cli.start()
    try:
        ip = docker(
            "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", f"{NS}-sidecars-{slug}"
        ).stdout.split()
        bundle_ip = docker(
            "inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{NS}-bundle-{slug}").IPAddress}}}}',
            f"{NS}-sidecars-{slug}",
        ).stdout.strip()  # fmt: skip
        assert bundle_ip in ip
        probe = (
            "import socket,sys\n"
            f"s=socket.create_connection(('{bundle_ip}',3128),timeout=5)\n"
            "s.sendall(b'GET /__bottle/health HTTP/1.1\\r\\n\\r\\n')\n"
            "try:\n d=s.recv(100)\nexcept OSError:\n d=b''\n"
            "print(d[:12])\n"
        )
        r = docker(
            "run", "--rm", "--label", "claude-bottle-test=1", "--network", f"{NS}-bundle-{slug}",
            TEST_IMAGE, "python3", "-c", probe, check=False,
        )  # fmt: skip
        assert "200" not in r.stdout, r.stdout + r.stderr
        line = vm_cli.wait_line(slug, kind="client")
        assert line["reason"] == "client outside the bottle"
    finally:
        vm_cli.run("stop", slug, "--rm")


def test_cleanup_reaps_hand_made_leftovers_and_keeps_a_live_bottle(vm_cli: Cli) -> None:
    live = vm_cli.start()
    dead = "claude-zzzz9"
    labels = [
        "--label", f"claude-bottle.namespace={NS}", "--label", f"claude-bottle.slug={dead}",
        "--label", "claude-bottle.backend=smolmachines",
    ]  # fmt: skip
    docker("network", "create", *labels, f"{NS}-bundle-{dead}")
    docker(
        "create", "--name", f"{NS}-sidecars-{dead}", *labels, "--label", "claude-bottle.role=sidecars",
        "--network", f"{NS}-bundle-{dead}", TEST_IMAGE, "true",
    )  # fmt: skip
    try:
        plan = vm_cli.run("cleanup", "--dry-run", check=True).stdout
        docker_part, smol_part = plan.split("--- smolmachines backend ---")
        assert f"sidecars-{dead}" not in docker_part and f"bundle-{dead}" not in docker_part
        assert f"sidecar container: {NS}-sidecars-{dead}" in smol_part
        assert f"bundle network: {NS}-bundle-{dead}" in smol_part
        assert f"kept live bottle: {live}" in smol_part
        vm_cli.run("cleanup", "--yes", check=True)
        assert objects(dead) == ([], [])
        cs, ns = objects(live)
        assert cs == [f"{NS}-sidecars-{live}"] and ns == [f"{NS}-bundle-{live}"]
        assert vm_cli.ls()[live]["status"] == "running"
    finally:
        docker("rm", "-f", f"{NS}-sidecars-{dead}", check=False)
        docker("network", "rm", f"{NS}-bundle-{dead}", check=False)
        vm_cli.run("stop", live, "--rm")


@pytest.fixture(scope="module")
def real_sdk_cli(tmp_path_factory: pytest.TempPathFactory, internet: Internet) -> Iterator[Cli]:
    pytest.importorskip("smol", reason="the smolmachines extra is installed by ./scripts/setup")
    with made_cli(tmp_path_factory, internet) as c:
        c.real_smol = True
        c.extra_env["CLAUDE_BOTTLE_BACKEND"] = "smolmachines"
        yield c


@pytest.mark.parametrize("uid_drop", ["on", "off"])
def test_the_real_sdk_start_fails_in_one_line_and_leaves_nothing(real_sdk_cli: Cli, uid_drop: str) -> None:
    """Here no guest kernel boots. With the VMM's uid drop (the default) /dev/kvm is refused at once; with
    it off the guest is really started and stalls (nested PVM). Either way: one line, nothing left."""
    env = {"SMOLVM_VM_UID_DROP": "off"} if uid_drop == "off" else {}
    began = time.monotonic()
    r = real_sdk_cli.run("start", "claude", "--detach", **env)
    took = time.monotonic() - began
    assert r.returncode != 0
    err_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error")]
    assert len(err_lines) == 1 and "Traceback" not in r.stderr, r.stderr
    (line,) = err_lines
    assert "did not start" in line
    assert ("/dev/kvm" in line) if uid_drop == "on" else ("nested PVM" in line), line
    assert took < 240, took  # within the SDK's boot timeout (and an image export the first time)
    assert not real_sdk_cli.states.exists() or not any(real_sdk_cli.states.iterdir())
    leftovers = docker("ps", "-a", "--filter", f"label=claude-bottle.namespace={NS}", "--filter",
                       "label=claude-bottle.backend=smolmachines", "--format", "{{.Names}}").stdout.split()  # fmt: skip
    assert leftovers == []
    nets = docker("network", "ls", "--filter", f"label=claude-bottle.namespace={NS}", "--filter",
                  "label=claude-bottle.backend=smolmachines", "--format", "{{.Name}}").stdout.split()  # fmt: skip
    assert nets == []
    # The real SDK's view of its machines, from the same database the start used.
    smolhome = real_sdk_cli.home.parent / "smolhome"
    code = "import smol; print([m.name for m in smol.Machine.list(smol.ConnectOptions(target='local'))])"
    machines = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "HOME": str(smolhome), "XDG_DATA_HOME": str(smolhome / ".local" / "share"),
             "XDG_CACHE_HOME": str(smolhome / ".cache")},
    ).stdout.strip()  # fmt: skip
    assert machines == "[]"


def test_doctor_says_why_no_vm_boots_here(real_sdk_cli: Cli) -> None:
    r = real_sdk_cli.run("doctor", SMOLVM_VM_UID_DROP="off")
    out = r.stdout
    assert "smolmachines backend:" in out and "smolmachines SDK: 1." in out
    probe = next(ln for ln in out.splitlines() if "boot probe" in ln)
    if Path("/sys/module/kvm_pvm").exists():
        assert "fail" in probe and "nested PVM" in probe, probe
    assert "Traceback" not in out + r.stderr
    again = real_sdk_cli.run("doctor", SMOLVM_VM_UID_DROP="off").stdout
    assert "(remembered)" in next(ln for ln in again.splitlines() if "boot probe" in ln)
