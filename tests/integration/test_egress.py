"""The sealed network: through the guard to allowed hosts only, no way around it, every decision audited."""

from __future__ import annotations

import json
import time

from .conftest import NS, Cli, Internet, docker


def sh(cli: Cli, slug: str, script: str) -> tuple[int, str]:
    r = cli.run("exec", slug, "--", "sh", "-c", script)
    return r.returncode, r.stdout + r.stderr


def audit(cli: Cli, slug: str) -> list[dict[str, object]]:
    r = cli.run("logs", slug, "--egress", check=True)
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_allowed_host_through_the_guard(cli: Cli, bottle: str) -> None:
    rc, out = sh(cli, bottle, "curl -sS -m 10 http://allowed.test/")
    assert rc == 0 and "hello from allowed" in out
    lines = audit(cli, bottle)
    allowed = [ln for ln in lines if ln.get("host") == "allowed.test" and ln.get("decision") == "allow"]
    assert {ln["kind"] for ln in allowed} == {"http"}
    for ln in allowed:
        assert ln["bottle"] == bottle and ln["port"] == 80
        assert int(cli.end_of(bottle, ln)["bytes_down"]) > 0
    # Plain HTTP inside a CONNECT tunnel is refused: it could name any virtual host, request after request.
    rc, out = sh(cli, bottle, "curl -sS -m 10 --proxytunnel http://allowed.test/")
    assert rc != 0 and "hello" not in out
    cli.wait_line(bottle, kind="connect", decision="deny", reason="tunnel-not-tls")


def test_forbidden_host_refused_and_audited(cli: Cli, bottle: str) -> None:
    rc, out = sh(cli, bottle, "curl -sS -m 10 -o /dev/null -w '%{http_code}' http://forbidden.test/")
    assert out.startswith("403")
    rc, out = sh(cli, bottle, "curl -sS -m 10 https://forbidden.test/")
    assert rc != 0 and "403" in out
    denied = [ln for ln in audit(cli, bottle) if ln.get("host") == "forbidden.test"]
    assert {ln["decision"] for ln in denied} == {"deny"}
    assert {ln["kind"] for ln in denied} == {"http", "connect"}
    assert all(ln["reason"] == "host not in allow list" for ln in denied)


def test_allowed_host_on_another_port_refused(cli: Cli, bottle: str) -> None:
    rc, out = sh(cli, bottle, "curl -sS -m 10 https://allowed.test:8443/")
    assert rc != 0 and "403" in out


def test_no_route_around_the_guard(cli: Cli, bottle: str, internet: Internet) -> None:
    # By name without the proxy: the agent's network has no resolver for outside names.
    rc, out = sh(cli, bottle, "curl -sS -m 5 --noproxy '*' http://allowed.test/")
    assert rc != 0 and "hello" not in out
    # By address without the proxy: the internal network has no route anywhere.
    for ip in (internet.allowed_ip, internet.forbidden_ip):
        rc, out = sh(cli, bottle, f"curl -sS -m 5 --noproxy '*' http://{ip}/")
        assert rc != 0 and "hello" not in out, out
    # Through the proxy by IP: the IP is not in the allow list.
    rc, out = sh(cli, bottle, f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://{internet.allowed_ip}/")
    assert out.startswith("403")


def test_hardening_visible_in_docker_inspect(bottle: str) -> None:
    agent, guard, net = (
        json.loads(docker("inspect", f"{NS}-{bottle}-{svc}").stdout)[0] for svc in ("agent", "egress", "net")
    )
    for c in (agent, guard):
        hc = c["HostConfig"]
        assert hc["CapDrop"] == ["ALL"] and not hc.get("CapAdd")
        assert "no-new-privileges:true" in hc["SecurityOpt"]
        assert hc["Privileged"] is False and hc["Init"] is True
        assert c["Config"]["User"] and not c["Config"]["User"].startswith("0")
    for c in (agent, guard, net):
        assert not any("docker.sock" in m["Source"] for m in c["Mounts"])
    assert guard["HostConfig"]["ReadonlyRootfs"] is True
    assert agent["HostConfig"]["PidsLimit"] == 1024 and agent["HostConfig"]["Memory"] == 4 * 1024**3
    assert agent["HostConfig"]["NanoCpus"] == 2 * 10**9
    # The agent has no network of its own: it lives in the net container's namespace, which is on the
    # internal network only and firewalled to the guard.
    assert agent["HostConfig"]["NetworkMode"] == f"container:{net['Id']}"
    (netname,) = net["NetworkSettings"]["Networks"]
    assert netname == f"{NS}-{bottle}-internal"
    assert json.loads(docker("network", "inspect", netname).stdout)[0]["Internal"] is True
    assert net["HostConfig"]["CapDrop"] == ["ALL"] and "no-new-privileges:true" in net["HostConfig"]["SecurityOpt"]
    top = docker("top", f"{NS}-{bottle}-net").stdout.splitlines()[1:]
    assert top and all(line.split()[0] in ("nobody", "65534") for line in top), top
    env = dict(e.split("=", 1) for e in agent["Config"]["Env"])
    assert env["HTTPS_PROXY"] == env["http_proxy"] == "http://egress:3128"


def test_live_grant_and_revoke_without_restart(cli: Cli, bottle: str) -> None:
    probe = "curl -sS -m 10 -o /dev/null -w '%{http_code}' http://forbidden.test/"
    assert sh(cli, bottle, probe)[1].startswith("403")
    agent_id = docker("inspect", "--format", "{{.Id}}", f"{NS}-{bottle}-agent").stdout
    r = cli.run("grant", bottle, "--egress", "forbidden.test:80", "--private")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 5
    while not sh(cli, bottle, probe)[1].startswith("200"):
        assert time.monotonic() < deadline, "grant did not apply within 5 s"
    assert cli.run("grant", bottle, "--egress", "forbidden.test:80", "--revoke").returncode == 0
    deadline = time.monotonic() + 5
    while not sh(cli, bottle, probe)[1].startswith("403"):
        assert time.monotonic() < deadline, "revoke did not apply within 5 s"
    # Same containers throughout: no restart.
    assert docker("inspect", "--format", "{{.Id}}", f"{NS}-{bottle}-agent").stdout == agent_id
    ops = [ln for ln in audit(cli, bottle) if ln["kind"] == "operator"]
    assert [o["action"] for o in ops][-2:] == ["grant", "revoke"]
    # The guard's lines and the CLI's operator lines, written concurrently, form one intact chain.
    v = cli.run("verify", bottle)
    assert v.returncode == 0 and v.stdout.startswith("intact: "), v.stdout + v.stderr
    r = cli.run("grant", bottle)
    assert r.returncode == 1 and "nothing to grant" in r.stderr
