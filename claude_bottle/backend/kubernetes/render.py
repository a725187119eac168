"""A bottle as Kubernetes objects (issue 16; docs/design/beyond-one-machine.md).

One Pod per bottle: the guard as a sidecar, the agent beside it with no route but the guard. Containers
of a Pod share one network namespace, which a NetworkPolicy cannot divide, so the Pod is sealed from
inside, as the Docker backend's `net` container seals a bottle's namespace: an init container (the only
one with NET_ADMIN, and it exits) lets only the guard's uid out, sends every other uid's DNS to the guard,
and refuses the rest. The NetworkPolicy then fences the Pod as a whole: nothing reaches it (no neighbour
can use its guard), and it reaches only the cluster's DNS and the public internet on the ports the
manifest allows (the guard judges every host). State lives in a PersistentVolumeClaim (the workspace,
`~/.claude`, the audit log); the guard's credentials in a Secret mounted into the guard only; its policy
in a ConfigMap (a grant rewrites it; the kubelet refreshes the file the guard re-reads). Nothing here
talks to a cluster: `backend.py` applies what this renders.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from claude_bottle.guard import HEALTH_PATH
from claude_bottle.guard_inputs.inputs import GuardInputs
from claude_bottle.identity import AGENT_HOME, LABEL, Identity, RuntimeIds, object_labels
from claude_bottle.manifest import BottleSpec

__all__ = [
    "DNS_PORT",
    "GUARD_LISTEN",
    "HELPER_LABEL",
    "HOME_PARTS",
    "Names",
    "firewall_script",
    "render_helper",
    "render_objects",
]

GUARD_LISTEN = "127.0.0.1"
DNS_PORT = 5353  # the guard's DNS inside the Pod (other uids' port 53 is redirected to it)
PRIVATE_V4 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10", "127.0.0.0/8")
STATE_SIZE = "10Gi"
HELPER_LABEL = f"{LABEL}.helper"  # a helper Pod (what comes home): not the bottle, never listed as it
# What comes home from the claim, each read by a container of the helper running as its owner: the log (the
# guard's), then ~/.claude (the agent's).
HOME_PARTS = (("log", "log"), ("home", "claude-home"))


@dataclass(frozen=True)
class Names:
    """Every object of a bottle is named `<namespace>-<slug>[-what]` (DNS-1123 labels)."""

    prefix: str  # <namespace>-<slug>

    @property
    def pod(self) -> str:
        return self.prefix

    @property
    def state(self) -> str:
        return f"{self.prefix}-state"

    @property
    def secret(self) -> str:
        return f"{self.prefix}-guard"

    @property
    def policy(self) -> str:
        return f"{self.prefix}-policy"

    @property
    def honey(self) -> str:
        return f"{self.prefix}-honey"

    @property
    def netpol(self) -> str:
        return self.prefix

    @property
    def helper(self) -> str:
        return f"{self.prefix}-helper"


def _labels(identity: Identity) -> dict[str, str]:
    """Selectable labels (label values allow no ':' or spaces); the rest of the identity is annotations."""
    return {
        **object_labels(identity.backend, identity.slug, identity.namespace),
        "app.kubernetes.io/managed-by": "claude-bottle",
    }


def _meta(name: str, identity: Identity) -> dict[str, Any]:
    notes = {k: v for k, v in identity.labels().items() if k not in _labels(identity)}
    return {"name": name, "labels": _labels(identity), "annotations": notes}


def firewall_script(guard_uid: int) -> str:
    """The init container's rules: the guard's uid goes out; everyone else reaches the guard on loopback
    only, their DNS redirected to it; the rest is refused at once (reset/unreachable, never a hang)."""
    return f"""set -eu
iptables-restore <<RULES
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A OUTPUT -p udp --dport 53 -m owner ! --uid-owner {guard_uid} -j REDIRECT --to-ports {DNS_PORT}
-A OUTPUT -p tcp --dport 53 -m owner ! --uid-owner {guard_uid} -j REDIRECT --to-ports {DNS_PORT}
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT DROP [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -m owner --uid-owner {guard_uid} -j ACCEPT
-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset
-A OUTPUT -j REJECT
COMMIT
RULES
ip6tables-restore <<RULES
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT DROP [0:0]
-A INPUT -i lo -j ACCEPT
-A OUTPUT -m owner --uid-owner {guard_uid} -j ACCEPT
-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset
-A OUTPUT -j REJECT
COMMIT
RULES
"""


def prepare_script(ids: RuntimeIds) -> str:
    g, a = f"{ids.guard_uid}:{ids.guard_gid}", f"{ids.agent_uid}:{ids.agent_gid}"
    return (
        "set -eu; cd /state; mkdir -p log run workspace claude-home; "
        f"chown {g} log run; chmod 0700 log; chmod 0755 run; chown {a} workspace claude-home; "
        "touch log/egress.jsonl log/requests.jsonl; "
        f"chown {g} log/egress.jsonl log/requests.jsonl; chmod 0600 log/egress.jsonl log/requests.jsonl; "
        f"chown {a} /state; chmod 0755 /state"
    )


def _hardened(uid: int, gid: int, *, read_only: bool) -> dict[str, Any]:
    return {
        "runAsUser": uid,
        "runAsGroup": gid,
        "runAsNonRoot": uid != 0,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _quantity(memory: str) -> str:
    """The manifest's docker-style memory ("4g", "512m") as a Kubernetes quantity ("4Gi", "512Mi")."""
    unit = memory[-1].lower()
    return memory[:-1] + {"k": "Ki", "m": "Mi", "g": "Gi"}[unit] if unit in "kmg" else memory


def _ports(spec: BottleSpec) -> list[int]:
    """The ports the guard may need to reach outside: those the manifest's allow rules name."""
    ports = {443, 80}
    for rule in spec.egress.allow:
        ports.update(rule.ports)
    return sorted(ports)


def render_objects(
    *,
    identity: Identity,
    spec: BottleSpec,
    ids: RuntimeIds,
    guard: GuardInputs,
    agent_image: str,
    guard_image: str,
    policy: str,
    secrets: str,
    honey: dict[str, str],
    storage_class: str | None = None,
) -> list[dict[str, Any]]:
    """The bottle's objects, in the order they are applied: claim, secret, config maps, policy, Pod."""
    names = Names(f"{identity.namespace}-{identity.slug}")
    # `egress` is the Pod's own loopback (hostAliases): the guard's usual URL holds.
    agent_env = guard.agent_environment(spec.env, slug=identity.slug)
    honey_keys = {rel: f"h{i}" for i, rel in enumerate(sorted(honey))}
    health = f"http://{GUARD_LISTEN}:{guard.port}{HEALTH_PATH}"
    probe = f"import urllib.request as u; u.urlopen('{health}', timeout=2)"
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(names.state, identity),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": STATE_SIZE}},
            **({"storageClassName": storage_class} if storage_class else {}),
        },
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(names.secret, identity),
        "type": "Opaque",
        "stringData": {"secrets.json": secrets},
    }
    policy_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(names.policy, identity),
        "data": {"policy.json": policy},
    }
    honey_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(names.honey, identity),
        "data": {key: honey[rel] for rel, key in honey_keys.items()},
    }
    netpol = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(names.netpol, identity),
        "spec": {
            "podSelector": {"matchLabels": _labels(identity)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],  # nothing reaches the Pod: no neighbour uses its guard
            "egress": [
                {  # the cluster's DNS, for the guard's own lookups
                    "to": [
                        {
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
                {  # the public internet on the manifest's ports; never the cluster, the node or metadata
                    "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_V4)}}],
                    "ports": [{"protocol": "TCP", "port": p} for p in _ports(spec)],
                },
            ],
        },
    }
    state_mounts = {
        "workspace": "/workspace",
        "claude-home": f"{AGENT_HOME}/.claude",
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # no cluster credentials in the bottle
        "enableServiceLinks": False,  # no other service's address in the agent's environment
        "restartPolicy": "Always",  # a guard that dies comes back; meanwhile the agent is fenced in
        "terminationGracePeriodSeconds": 1,
        "hostAliases": [{"ip": GUARD_LISTEN, "hostnames": ["egress"]}],
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}, "fsGroup": ids.agent_gid},
        # gVisor: the cluster's RuntimeClass for runsc; it holds the whole Pod (the guard beside the agent).
        **({"runtimeClassName": spec.runtime_class} if spec.isolation == "gvisor" else {}),
        "initContainers": [
            {
                "name": "firewall",
                "image": agent_image,
                "command": ["sh", "-c", firewall_script(ids.guard_uid)],
                "securityContext": {
                    "runAsUser": 0,
                    "runAsNonRoot": False,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
                },
            },
            {
                # The claim's folders, each owned by the one that writes it (the guard: its log and marks).
                "name": "prepare",
                "image": agent_image,
                "command": ["sh", "-c", prepare_script(ids)],
                "securityContext": {
                    "runAsUser": 0,
                    "runAsNonRoot": False,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "FOWNER", "DAC_OVERRIDE"]},
                },
                "volumeMounts": [{"name": "state", "mountPath": "/state"}],
            },
            {
                # Holds the Pod until the CLI has copied the workspace and ~/.claude in (a tar through
                # `kubectl exec`), then marks it: the agent never starts on an empty workspace.
                "name": "seed",
                "image": agent_image,
                "command": ["sh", "-c", "until [ -e /state/.seeded ]; do sleep 0.2; done"],
                "securityContext": _hardened(ids.agent_uid, ids.agent_gid, read_only=True),
                "volumeMounts": [{"name": "state", "mountPath": "/state"}],
            },
        ],
        "containers": [
            {
                "name": "guard",
                "image": guard_image,
                "args": guard.argv(
                    listen=f"{GUARD_LISTEN}:{guard.port}",
                    clients=f"{GUARD_LISTEN}/32",
                    guard_ip=GUARD_LISTEN,
                    dns_port=DNS_PORT,
                ),
                "securityContext": _hardened(ids.guard_uid, ids.guard_gid, read_only=True),
                "resources": {"limits": {"memory": "512Mi", "cpu": "1"}, "requests": {"memory": "64Mi"}},
                # Run in the guard's container (the kubelet's own probes come from the node, not the Pod).
                "readinessProbe": {"exec": {"command": ["python3", "-c", probe]}, "periodSeconds": 2},
                "volumeMounts": [
                    {"name": "guard-files", "mountPath": "/etc/claude-bottle", "readOnly": True},
                    {"name": "state", "mountPath": "/var/log/claude-bottle", "subPath": "log"},
                    {"name": "state", "mountPath": "/bottle-run", "subPath": "run"},
                ],
            },
            {
                "name": "agent",
                "image": agent_image,
                "workingDir": "/workspace",
                "env": [{"name": k, "value": v} for k, v in sorted(agent_env.items())],
                "securityContext": _hardened(ids.agent_uid, ids.agent_gid, read_only=False),
                "resources": {"limits": {"memory": _quantity(spec.resources.memory), "cpu": str(spec.resources.cpus)}},
                "volumeMounts": [
                    *({"name": "state", "mountPath": path, "subPath": sub} for sub, path in state_mounts.items()),
                    {"name": "state", "mountPath": "/bottle-run", "subPath": "run", "readOnly": True},
                    *(
                        {"name": "honey", "mountPath": f"{AGENT_HOME}/{rel}", "subPath": key, "readOnly": True}
                        for rel, key in honey_keys.items()
                    ),
                ],
            },
        ],
        "volumes": [
            {"name": "state", "persistentVolumeClaim": {"claimName": names.state}},
            {
                "name": "guard-files",  # the Secret is mounted into the guard only
                "projected": {
                    "sources": [
                        {"configMap": {"name": names.policy}},
                        {"secret": {"name": names.secret}},
                    ]
                },
            },
            {"name": "honey", "configMap": {"name": names.honey}},
        ],
    }
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(names.pod, identity), "spec": pod_spec}
    return [claim, secret, policy_map, honey_map, netpol, pod]


def render_helper(*, identity: Identity, ids: RuntimeIds, image: str, deadline: int) -> list[dict[str, Any]]:
    """What reads a stopped bottle's claim for the trip home, with the bottle's Pod gone (nothing of the
    agent runs, so nothing it does can stop or change the stream): a Pod mounting the claim read-only, one
    container per part running as that part's owner (non-root, every capability dropped, a read-only root,
    no service-account token), that only sleeps until `kubectl exec` runs tar in it, and is ended by the
    cluster after `deadline` seconds if nobody removes it; and a NetworkPolicy that gives it no network."""
    names = Names(f"{identity.namespace}-{identity.slug}")

    def meta() -> dict[str, Any]:
        out = _meta(names.helper, identity)
        out["labels"][HELPER_LABEL] = "1"
        return out

    owners = {"log": (ids.guard_uid, ids.guard_gid), "home": (ids.agent_uid, ids.agent_gid)}
    netpol = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(),
        "spec": {"podSelector": {"matchLabels": meta()["labels"]}, "policyTypes": ["Ingress", "Egress"]},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta(),
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "restartPolicy": "Never",
            "activeDeadlineSeconds": deadline,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": container,
                    "image": image,
                    "command": ["sleep", str(deadline)],
                    "securityContext": _hardened(*owners[container], read_only=True),
                    "resources": {"limits": {"memory": "128Mi", "cpu": "500m"}, "requests": {"memory": "16Mi"}},
                    "volumeMounts": [{"name": "state", "mountPath": f"/v/{sub}", "subPath": sub, "readOnly": True}],
                }
                for container, sub in HOME_PARTS
            ],
            "volumes": [{"name": "state", "persistentVolumeClaim": {"claimName": names.state, "readOnly": True}}],
        },
    }
    return [netpol, pod]


def as_list(objects: Sequence[dict[str, Any]]) -> str:
    """What `kubectl apply -f -` reads: a List of the objects, as JSON."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
