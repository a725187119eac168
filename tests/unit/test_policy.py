from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claude_bottle.guard.policy import Decision, Policy, PolicyFile, Rule, is_public_address, normalise_host


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("API.Example.COM", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("[::1]", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("bücher.example", "xn--bcher-kva.example"),
    ],
)
def test_normalise_host(raw: str, canonical: str) -> None:
    assert normalise_host(raw) == canonical


@given(st.text(alphabet="abcXYZ019.-[]:", max_size=30))
def test_normalise_is_idempotent(raw: str) -> None:
    once = normalise_host(raw)
    assert normalise_host(once) == once


POLICY = Policy.from_dict(
    {
        "bottle": "b",
        "allow": [
            {"host": "api.example.com"},
            {"host": "*.cdn.example", "ports": [443]},
            {"host": "svc.lan", "ports": [8080], "private": True},
        ],
        "deny": [{"host": "bad.cdn.example"}],
    }
)


@pytest.mark.parametrize(
    ("host", "port", "allowed", "reason"),
    [
        ("api.example.com", 443, True, "allowed by rule api.example.com"),
        ("API.EXAMPLE.COM.", 80, True, "allowed by rule api.example.com"),
        ("api.example.com", 22, False, "port 22 not allowed for api.example.com"),
        ("a.cdn.example", 443, True, "allowed by rule *.cdn.example"),
        ("a.b.cdn.example", 443, True, "allowed by rule *.cdn.example"),
        ("cdn.example", 443, False, "host not in allow list"),
        ("evilcdn.example", 443, False, "host not in allow list"),
        ("bad.cdn.example", 443, False, "denied by rule bad.cdn.example"),
        ("api.example.com.evil.test", 443, False, "host not in allow list"),
        ("svc.lan", 8080, True, "allowed by rule svc.lan"),
    ],
)
def test_policy_check(host: str, port: int, allowed: bool, reason: str) -> None:
    d = POLICY.check(host, port)
    assert (d.allowed, d.reason) == (allowed, reason)


@pytest.mark.parametrize(
    ("addr", "public"),
    [
        ("8.8.8.8", True),
        ("10.1.2.3", False),
        ("172.20.0.2", False),
        ("192.168.1.1", False),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("::1", False),
        ("fe80::1", False),
        ("::ffff:10.0.0.1", False),
        ("224.0.0.1", False),
        ("0.0.0.0", False),
        ("100.64.0.1", False),
        ("2606:4700::1111", True),
        ("fd00::1", False),
    ],
)
def test_public_addresses(addr: str, public: bool) -> None:
    assert is_public_address(addr) is public


def test_policy_file_reloads_on_change_and_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"bottle": "b", "allow": [{"host": "a.example"}]}))
    pf = PolicyFile(path, check_every=0)
    assert pf.current().check("a.example", 443).allowed
    assert not pf.current().check("b.example", 443).allowed
    path.write_text(json.dumps({"bottle": "b", "allow": [{"host": "b.example"}]}))
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert pf.current().check("b.example", 443).allowed
    path.write_text("{not json")
    os.utime(path, ns=(time.time_ns() + 2 * 10**9, time.time_ns() + 2 * 10**9))
    assert pf.current().check("b.example", 443).allowed  # half-written file: last good policy


def test_missing_policy_file_allows_nothing(tmp_path: Path) -> None:
    pf = PolicyFile(tmp_path / "absent.json")
    assert not pf.current().check("api.example.com", 443).allowed
    assert Rule("x.example").matches("x.example", 443)


def test_a_deny_rule_without_ports_denies_every_port() -> None:
    p = Policy.from_dict({"allow": [{"host": "*.test", "ports": [22, 443, 8443]}], "deny": [{"host": "evil.test"}]})
    for port in (22, 443, 8443):
        assert p.check("evil.test", port) == Decision(False, "denied by rule evil.test"), port
    assert p.check("good.test", 8443).allowed


def test_a_deny_rule_with_ports_denies_those_ports_only() -> None:
    p = Policy.from_dict(
        {"allow": [{"host": "*.test", "ports": [22, 443]}], "deny": [{"host": "git.test", "ports": [22]}]}
    )
    assert p.check("git.test", 22) == Decision(False, "denied by rule git.test")
    assert p.check("git.test", 443).allowed
    assert p.check("other.test", 22).allowed


@pytest.mark.parametrize(
    ("rule", "label"),
    [
        ({"host": "a.test"}, "a.test"),
        ({"host": "a.test", "ports": [443, 80]}, "a.test"),
        ({"host": "a.test", "ports": [80, 443]}, "a.test:80,443"),
        ({"host": "a.test", "ports": [8443]}, "a.test:8443"),
        ({"host": "a.test", "ports": [22, 2222]}, "a.test:22,2222"),
    ],
)
def test_a_rule_is_labelled_by_its_host_and_any_ports_beyond_the_default(rule: dict[str, object], label: str) -> None:
    assert Rule.from_dict(rule).label() == label


def test_a_rule_is_public_unless_it_says_private() -> None:
    assert Rule.from_dict({"host": "a.test"}).private is False
    assert Rule.from_dict({"host": "a.test", "private": True}).private is True


def test_the_policy_files_form_is_exact_and_reads_back() -> None:
    empty = Policy(bottle="b-1")
    assert empty.to_dict() == {"version": 1, "bottle": "b-1", "allow": [], "deny": [], "local_names": {}}
    full = Policy(
        bottle="b-2",
        allow=(Rule("a.test"),),
        deny=(Rule("d.test", (22,)),),
        local_names={"egress": "10.0.0.2"},
        decisions={"r-00000001": ("grant", "ok")},
        ask_timeout=30.0,
        git_refs=("refs/heads/feature/*",),
        git_repos=("me/repo",),
    )
    assert full.to_dict() == {
        "version": 1,
        "bottle": "b-2",
        "allow": [{"host": "a.test", "ports": [443, 80], "private": False}],
        "deny": [{"host": "d.test", "ports": [22], "private": False}],
        "local_names": {"egress": "10.0.0.2"},
        "decisions": {"r-00000001": ["grant", "ok"]},
        "ask_timeout": 30.0,
        "git_refs": ["refs/heads/feature/*"],
        "git_repos": ["me/repo"],
    }
    assert Policy.from_dict(full.to_dict()) == full


@pytest.mark.parametrize("name", ["", "x", "abc", "1.2.3.4x", "0x", ".", "1..2", "1.2.3.4 evil.test", "127.1\tx"])
def test_what_is_no_legacy_ipv4_spelling_is_left_alone(name: str) -> None:
    """inet_aton (glibc) reads "1.2.3.4 anything" as 1.2.3.4: only the characters of a spelling reach it."""
    from claude_bottle.guard.policy import _legacy_ipv4

    assert _legacy_ipv4(name) is None
    assert normalise_host(name + ".test") != "1.2.3.4"
