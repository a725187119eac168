"""Git-aware egress against a real git smart-HTTP server (issue 15, item 3): Debian's `git http-backend`
behind a small web server on the test network is the GitHub route's upstream. A clone works through the
route with the real token added by the guard; a push to the bottle's own branch passes; pushes to `main`,
to another bottle's branch, a deletion and a tag are refused, each with its audit line; the server's refs
prove what happened."""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .conftest import FAKES, TEST_GITHUB_TOKEN, TEST_IMAGE, Cli, Internet, docker, user_project

IMAGE = "cbtest-gitserver:1"  # the test image with git (a cache like the bottle images; labelled as a test's)


@dataclass
class GitServer:
    ip: str

    def get(self, path: str) -> object:
        with urllib.request.urlopen(f"http://{self.ip}:80{path}", timeout=10) as resp:
            return json.load(resp)

    def refs(self) -> dict[str, str]:
        refs = self.get("/_refs/repo.git")
        assert isinstance(refs, dict)
        return refs


@pytest.fixture(scope="module")
def git_server(internet: Internet) -> Iterator[GitServer]:
    if docker("image", "inspect", IMAGE, check=False).returncode != 0:
        dockerfile = (
            f"FROM {TEST_IMAGE}\nRUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
            "--no-install-recommends git && rm -rf /var/lib/apt/lists/*\n"
        )
        import subprocess

        subprocess.run(
            ["docker", "build", "-q", "-t", IMAGE, "--label", "claude-bottle-test=1", "-"],
            input=dockerfile, text=True, capture_output=True, check=True, timeout=600,
            env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
        )  # fmt: skip
    name = f"cbtest-gitsrv-{secrets.token_hex(3)}"
    docker(
        "run", "-d", "--name", name, "--label", "claude-bottle-test=1", "--network", internet.network,
        "--network-alias", "gitsrv.test", "-v", f"{FAKES}:/fake:ro", IMAGE,
        "python3", "/fake/gitserver.py", "--token", TEST_GITHUB_TOKEN, "--repo", "repo",
    )  # fmt: skip
    try:
        ip = docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
        server = GitServer(ip.stdout.strip())
        deadline = time.monotonic() + 30
        while True:
            try:
                server.refs()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield server
    finally:
        docker("rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def pusher(tmp_path_factory: pytest.TempPathFactory, internet: Internet, git_server: GitServer) -> Iterator[Cli]:
    edit = lambda text: text.replace('upstream = "http://github.test"', 'upstream = "http://gitsrv.test"')  # noqa: E731
    with user_project(tmp_path_factory, internet, "gitpush", edit=edit) as c:
        yield c


def test_pushes_through_the_github_route_go_to_the_bottles_own_branch_only(pusher: Cli, git_server: GitServer) -> None:
    cli = pusher
    slug = cli.start()
    main_before = git_server.refs()["refs/heads/main"]
    rc, out = cli.sh(
        slug,
        "set -e; cd /tmp && rm -rf r && git clone -q http://gitsrv.test/repo.git r && cd r && cat README && "
        "git config user.name agent && git config user.email agent@bottle && "
        "echo work > work.txt && git add work.txt && git commit -qm work && "
        f"git push -q origin HEAD:refs/heads/claude-bottle/{slug} 2>&1 && echo PUSHED-OWN",
    )
    assert rc == 0 and "served by git http-backend" in out and "PUSHED-OWN" in out, out
    # The token: the guard's, added on the way (the server answers 401 without it); the agent never had it.
    basic = "Basic " + base64.b64encode(f"x-access-token:{TEST_GITHUB_TOKEN}".encode()).decode()
    seen = git_server.get("/_requests")
    assert isinstance(seen, list) and seen and all(r["authorization"] == basic for r in seen)
    assert any("git-receive-pack" in r["path"] and r["method"] == "POST" for r in seen)
    own = f"refs/heads/claude-bottle/{slug}"
    pushed = git_server.refs()[own]
    line = cli.wait_line(slug, kind="git-push", ref=own)
    assert (line["decision"], line["reason"], line["new"]) == ("allow", "the bottle's own branch", pushed)

    other = "refs/heads/claude-bottle/other-abcde"
    attempts = {
        "refs/heads/main": ("git push origin HEAD:main", f"only {own} may be pushed, not refs/heads/main"),
        other: (f"git push origin HEAD:{other}", f"only {own} may be pushed, not {other}"),
        "refs/tags/v1": ("git tag v1 && git push origin v1", f"tag refs/tags/v1 is not allowed (only {own} unless"
                         " listed)"),
        own + " (delete)": (f"git push origin :{own}", f"deleting {own} is not allowed"),
    }  # fmt: skip
    for what, (command, reason) in attempts.items():
        rc, out = cli.sh(slug, f"cd /tmp/r && {command} 2>&1")
        assert rc != 0, (what, out)
        # What the agent sees: git's own rejection, with the guard's reason, as from a protected branch.
        assert "[remote rejected]" in out and f"({reason})" in out, (what, out)
        assert f"remote: claude-bottle guard: push refused: {reason}" in out, (what, out)
        ref = what.split(" ")[0]
        line = cli.wait_line(slug, kind="git-push", ref=ref, decision="deny")
        assert line["reason"] == reason, line
    refs = git_server.refs()
    assert refs == {"refs/heads/main": main_before, own: pushed}, refs  # nothing else reached the server
