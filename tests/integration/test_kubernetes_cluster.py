"""The Kubernetes backend on a real cluster (issue 16). No cluster can run on this machine kind, so this
suite runs only when a kubeconfig context is given: CLAUDE_BOTTLE_TEST_KUBE_CONTEXT=NAME (and
CLAUDE_BOTTLE_REGISTRY, a registry that cluster pulls from). Skipped otherwise, saying so."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .conftest import Cli, Internet, user_project

CONTEXT = os.environ.get("CLAUDE_BOTTLE_TEST_KUBE_CONTEXT", "")
pytestmark = pytest.mark.skipif(
    not CONTEXT or not os.environ.get("CLAUDE_BOTTLE_REGISTRY"),
    reason="no Kubernetes cluster: set CLAUDE_BOTTLE_TEST_KUBE_CONTEXT and CLAUDE_BOTTLE_REGISTRY to run it "
    "(this machine kind runs no cluster)",
)


@pytest.fixture
def on_cluster(tmp_path_factory: pytest.TempPathFactory, internet: Internet) -> Iterator[Cli]:
    edit = lambda text: text.replace("[bottles.default]\n", '[bottles.default]\nbackend = "kubernetes"\n', 1)  # noqa: E731
    with user_project(tmp_path_factory, internet, "kube", edit=edit) as c:
        c.extra_env.update(CLAUDE_BOTTLE_KUBE_CONTEXT=CONTEXT)
        yield c


def test_a_bottle_on_the_cluster_is_sealed_and_removed(on_cluster: Cli) -> None:
    cli = on_cluster
    slug = cli.start()
    rc, out = cli.sh(slug, "curl -sS -m 10 -o /dev/null -w '%{http_code}' https://example.com/ || true")
    assert "403" in out or rc != 0, out  # refused by the guard
    rc, out = cli.sh(slug, "curl -sS -m 5 --noproxy '*' https://1.1.1.1/ 2>&1 || echo BLOCKED")
    assert "BLOCKED" in out, out  # no route but the guard
    assert cli.run("stop", slug, "--rm").returncode == 0
    plan = cli.run("cleanup", "--dry-run").stdout
    assert slug not in plan or "persistentvolumeclaim" in plan
