"""kubectl's JSON read into typed rows (saved samples), and a cluster's odd answers read safely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_bottle.backend.kubernetes.rows import ObjectRow, PodRow, ServerVersion
from claude_bottle.errors import BackendError

SAMPLES = Path(__file__).parent / "samples"


def test_pods_from_a_saved_listing() -> None:
    bottle, helper, failed = PodRow.parse((SAMPLES / "kubectl-get-pods.json").read_text())
    assert bottle.name == "claude-bottle-claude-k8s01" and bottle.phase == "Running"
    assert bottle.running == {"agent", "guard"}  # the seed init container finished; it does not run
    assert bottle.annotations["claude-bottle.owner-pid"] == "4242"
    assert helper.labels["claude-bottle.helper"] == "home" and helper.running == frozenset()
    assert failed.phase == "Failed" and failed.running == frozenset()


def test_objects_keep_their_kind_and_name() -> None:
    rows = ObjectRow.parse((SAMPLES / "kubectl-get-pods.json").read_text())
    assert (rows[0].kind, rows[0].name) == ("Pod", "claude-bottle-claude-k8s01")
    assert rows[0].labels["claude-bottle.slug"] == "claude-k8s01"


def test_the_servers_version() -> None:
    assert ServerVersion.parse((SAMPLES / "kubectl-version.json").read_text()).git_version == "v1.31.4+k3s1"
    assert ServerVersion.parse('{"clientVersion": {"gitVersion": "v1.32.3"}}').git_version == ""  # no server
    assert ServerVersion.parse("error: not json").git_version == ""


ODD = [
    {"items": [{"kind": "Pod"}]},  # no metadata
    {"items": [{"kind": "Pod", "metadata": None, "status": "Running"}]},
    {"items": [{"kind": 3, "metadata": {"name": ["x"], "labels": {"claude-bottle.slug": 7}}}]},
    {"items": [{"metadata": {"name": "p"}, "status": {"containerStatuses": [None, {"state": []}, {"name": 1}]}}]},
    {"items": ["not an object", None, 5]},
]


@pytest.mark.parametrize("doc", ODD)
def test_odd_objects_read_as_absent_fields_never_a_crash(doc: dict[str, object]) -> None:
    for pod in PodRow.parse(json.dumps(doc)):
        assert isinstance(pod.name, str) and isinstance(pod.phase, str) and pod.running == frozenset()
        assert all(isinstance(v, str) for v in pod.labels.values())
    assert ObjectRow.parse(json.dumps(doc)) == []  # nothing that could be named back to kubectl


@pytest.mark.parametrize("text", ["", "<html>502</html>", "[1, 2]", '{"items": {"a": 1}}'])
def test_an_answer_that_is_not_a_listing_is_one_line(text: str) -> None:
    with pytest.raises(BackendError, match="kubectl get pods: kubectl's answer") as got:
        PodRow.parse(text)
    assert "\n" not in str(got.value)
