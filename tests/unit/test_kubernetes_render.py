"""The Kubernetes backend's objects (issue 16): validated offline against the Kubernetes API schemas
(kubernetes-validate, strict: an unknown field fails), and checked for what seals the bottle: no
service-account token, the Secret in the guard only, the agent without capabilities, nothing reaching
the Pod, the in-Pod firewall letting only the guard's uid out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from claude_bottle.backend.kubernetes.render import DNS_PORT, as_list, render_objects
from claude_bottle.guard_inputs.inputs import GuardInputs
from claude_bottle.identity import Identity, RuntimeIds
from claude_bottle.manifest import BottleSpec

VERSIONS = ["1.29.0", "1.33.0", kubernetes_validate.latest_version()]


def objects(**spec: Any) -> list[dict[str, Any]]:
    guard = GuardInputs(
        engine="guard",
        port=3128,
        dir=Path("/nonexistent"),
        audit=Path("/nonexistent/egress.jsonl"),
        agent_env={"ANTHROPIC_BASE_URL": "http://egress:3128/anthropic", "ANTHROPIC_API_KEY": "placeholder"},
    )
    return render_objects(
        identity=Identity("claude-abcde", "kubernetes", 42, 1000.5, "2026-11-28T12:00:00+00:00", "claude-bottle"),
        spec=BottleSpec.model_validate({"egress": {"allow": ["api.anthropic.com", "git.example.com:2222"]}, **spec}),
        ids=RuntimeIds(1000, 1000, 10001, 10001),
        guard=guard,
        agent_image="registry.example/claude-bottle-agent:abc",
        guard_image="registry.example/claude-bottle-guard:def",
        policy=json.dumps({"bottle": "claude-abcde", "allow": []}),
        secrets=json.dumps({"routes": {}, "honeytokens": []}),
        honey={".aws/credentials": "[default]\n", ".npmrc": "//r/:_authToken=npm_x\n"},
        storage_class="fast",
    )


def by_kind(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for o in objs:
        out.setdefault(o["kind"], o)
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_against_the_api_schema(version: str) -> None:
    objs = objects(resources={"memory": "512m", "cpus": 1.5})
    assert [o["kind"] for o in objs] == [
        "PersistentVolumeClaim", "Secret", "ConfigMap", "ConfigMap", "NetworkPolicy", "Pod",
    ]  # fmt: skip
    for o in objs:
        kubernetes_validate.validate(o, version, strict=True)  # raises on any schema error


def test_the_validator_would_see_a_mistake() -> None:
    """The control: a wrong type and an unknown field are caught, so a pass above means something."""
    pod = by_kind(objects())["Pod"]
    bad = json.loads(json.dumps(pod))
    bad["spec"]["containers"][0]["ports"] = "3128"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)
    bad = json.loads(json.dumps(pod))
    bad["spec"]["containers"][0]["securityContext"]["privilegd"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)


def test_the_pod_is_sealed() -> None:
    objs = by_kind(objects())
    pod = objs["Pod"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    containers = {c["name"]: c for c in pod["containers"]}
    agent, guard = containers["agent"], containers["guard"]
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert agent["securityContext"]["allowPrivilegeEscalation"] is False
    assert "add" not in guard["securityContext"]["capabilities"]
    # The credentials: in the guard's volume only; the agent's environment holds placeholders and the guard.
    secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in json.dumps(v)}
    assert secret_volumes == {"guard-files"}
    assert {m["name"] for m in guard["volumeMounts"]} >= {"guard-files"}
    assert "guard-files" not in {m["name"] for m in agent["volumeMounts"]}
    env = {e["name"]: e["value"] for e in agent["env"]}
    assert env["HTTPS_PROXY"] == "http://egress:3128" and env["ANTHROPIC_API_KEY"] == "placeholder"
    assert pod["hostAliases"] == [{"ip": "127.0.0.1", "hostnames": ["egress"]}]
    # The guard: its own loopback address, its own clients, its DNS where the firewall sends other uids'.
    args = guard["args"]
    assert args[args.index("--listen") + 1] == "127.0.0.1:3128" and args[args.index("--clients") + 1] == "127.0.0.1/32"
    assert args[args.index("--dns") + 1] == f"127.0.0.1:{DNS_PORT}"
    # The firewall: the one container with NET_ADMIN, an init container (it exits before the agent starts).
    init = {c["name"]: c for c in pod["initContainers"]}
    assert init["firewall"]["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    rules = init["firewall"]["command"][2]
    assert "-A OUTPUT -m owner --uid-owner 10001 -j ACCEPT" in rules and ":OUTPUT DROP" in rules
    assert f"! --uid-owner 10001 -j REDIRECT --to-ports {DNS_PORT}" in rules
    assert all("NET_ADMIN" not in json.dumps(c) for c in pod["containers"])


def test_the_network_policy_fences_the_pod() -> None:
    objs = by_kind(objects())
    np = objs["NetworkPolicy"]["spec"]
    assert np["podSelector"]["matchLabels"] == objs["Pod"]["metadata"]["labels"]
    assert np["policyTypes"] == ["Ingress", "Egress"] and np["ingress"] == []
    dns, internet = np["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    block = internet["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0" and {"10.0.0.0/8", "169.254.0.0/16", "192.168.0.0/16"} <= set(block["except"])
    assert {p["port"] for p in internet["ports"]} == {80, 443, 2222}


def test_labels_select_and_annotations_keep_the_rest() -> None:
    pod = by_kind(objects())["Pod"]["metadata"]
    assert pod["name"] == "claude-bottle-claude-abcde"
    assert pod["labels"]["claude-bottle.slug"] == "claude-abcde"
    assert pod["annotations"]["claude-bottle.created"] == "2026-11-28T12:00:00+00:00"
    assert json.loads(as_list(objects()))["kind"] == "List"


def helper_objects() -> list[dict[str, Any]]:
    from claude_bottle.backend.kubernetes.render import render_helper

    return render_helper(
        identity=Identity("claude-abcde", "kubernetes", 42, 1000.5, "2026-11-28T12:00:00+00:00", "claude-bottle"),
        ids=RuntimeIds(1000, 1000, 10001, 10001),
        image="registry.example/claude-bottle-agent:abc",
        deadline=3720,
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_the_helper_that_reads_a_claim_home_validates(version: str) -> None:
    for o in helper_objects():
        kubernetes_validate.validate(o, version, strict=True)


def test_the_helper_reads_the_claim_only_and_reaches_nothing() -> None:
    """Each part is read by a container running as its owner (the guard's log, the agent's ~/.claude), never
    root, with no capability, no token, a read-only root and the claim read-only; the cluster ends it; its
    NetworkPolicy selects it alone and allows nothing either way."""
    objs = by_kind(helper_objects())
    pod, netpol = objs["Pod"], objs["NetworkPolicy"]
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False and spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == 3720
    assert spec["volumes"] == [
        {"name": "state", "persistentVolumeClaim": {"claimName": "claude-bottle-claude-abcde-state", "readOnly": True}}
    ]
    owners = {c["name"]: c["securityContext"]["runAsUser"] for c in spec["containers"]}
    assert owners == {"log": 10001, "home": 1000}
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"] and sc["readOnlyRootFilesystem"]
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert all(m["readOnly"] for m in c["volumeMounts"])
    labels = pod["metadata"]["labels"]
    assert labels["claude-bottle.helper"] == "1" and labels["claude-bottle.slug"] == "claude-abcde"
    assert netpol["spec"] == {"podSelector": {"matchLabels": labels}, "policyTypes": ["Ingress", "Egress"]}
