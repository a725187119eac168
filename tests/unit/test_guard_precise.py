"""Exact values from the guard's small parts (DLP spans, heuristics' boundaries, the secrets file, the
audit log's helpers, host spellings), so a changed constant or operator shows (mutation testing)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from claude_bottle.guard import audit as audit_mod
from claude_bottle.guard.audit import AuditLog, Budget, Timer, cap
from claude_bottle.guard.config import load_secrets
from claude_bottle.guard.dlp import Hit, Scanner, entropy, is_tunnel_label
from claude_bottle.guard.policy import Policy, is_public_address, normalise_host

SECRET = "sk-ant-api03-SECRETvalue0123456789abcdef"
HONEY = "AKIAHONEYTOKEN000042"


# -- DLP ---------------------------------------------------------------------------------------------------
def test_entropy_values() -> None:
    assert entropy("aaaa") == 0.0
    assert entropy("aabb") == 1.0
    assert entropy("abcd") == 2.0


def test_literal_hits_carry_exact_spans_and_case_rules() -> None:
    s = Scanner(secrets=[SECRET], honeytokens=[HONEY])
    text = f"xx{SECRET}yy"
    assert s.find(text) == Hit("credential", 2, 2 + len(SECRET))
    assert s.find(f"ab{HONEY}") == Hit("honeytoken", 2, 2 + len(HONEY))
    upper = f"zz{SECRET.upper()}"
    assert s.find(upper, ignore_case=True) == Hit("credential", 2, 2 + len(SECRET))
    assert s.find(upper) is None  # case-sensitive: neither the literal nor the (lower-case) pattern
    assert s.find(f"zz{SECRET[:-3]}XYZ") == Hit("anthropic-key", 2, 2 + len(SECRET))  # the pattern, not the value


def test_pattern_hits_carry_exact_spans_and_case_rules() -> None:
    s = Scanner()
    assert s.find("key: AKIAIOSFODNN7EXAMPLE.") == Hit("aws-access-key", 5, 25)
    lower = "key: akiaiosfodnn7example"
    assert s.find(lower) is None
    assert s.find(lower, ignore_case=True) == Hit("aws-access-key", 5, 25)


def test_hosts_are_scanned_case_blind_with_label_spans() -> None:
    s = Scanner(honeytokens=[HONEY])
    assert s.find_host(f"{HONEY.lower()}.evil.test") == Hit("honeytoken", 0, len(HONEY))
    label = "zx8qmp2vr7tk9wl4nb6yh3jd"  # 24 characters, high entropy, digits
    assert s.find_host(f"a.bc.{label}.test") == Hit("encoded-hostname", 5, 5 + len(label))
    assert s.find_host("www.example.com") is None


@pytest.mark.parametrize(
    ("label", "tunnel"),
    [
        ("zx8qmp2vr7tk9wl4nb6yh3jd", True),  # 24: the shortest that counts
        ("zx8qmp2vr7tk9wl4nb6yh3j", False),  # 23
        ("0123456789abcdef0123456789abcdef", True),  # 32 hex digits
        ("abcdefghijklmnopqrstuvwxyz12", True),  # high entropy, exactly two digits
        ("abcdefghijklmnopqrstuvwxyz1a", False),  # high entropy, one digit
        ("aaaaaaaaaaaaaaaaaaaaaaaaaa11", False),  # two digits, low entropy
        ("averyordinarylonghostnamelabel", False),
    ],
)
def test_tunnel_label_boundaries(label: str, tunnel: bool) -> None:
    assert is_tunnel_label(label) is tunnel


# -- the secrets file ----------------------------------------------------------------------------------------
def test_load_secrets_reads_every_field(tmp_path: Path) -> None:
    p = tmp_path / "secrets.json"
    p.write_text(
        json.dumps(
            {
                "routes": {
                    "anthropic": {"upstream": "https://api.test/v1", "header": "x-api-key", "value": SECRET},
                    "github": {
                        "upstream": "https://gh.test",
                        "header": "authorization",
                        "value": "Basic Zm9v",
                        "secret": "ghp_rawtoken",
                    },
                },
                "honeytokens": [HONEY],
            }
        ),
        encoding="utf-8",
    )
    sec = load_secrets(p)
    a, g = sec.routes["anthropic"], sec.routes["github"]
    assert (a.name, a.upstream, a.header, a.value, a.secret) == (
        "anthropic",
        "https://api.test/v1",
        "x-api-key",
        SECRET,
        SECRET,
    )
    assert (g.name, g.header, g.value, g.secret) == ("github", "authorization", "Basic Zm9v", "ghp_rawtoken")
    assert (a.scheme, a.host, a.port, a.base_path) == ("https", "api.test", 443, "/v1")
    assert sec.honeytokens == (HONEY,)
    assert sec.scanner.find(f".{HONEY}") == Hit("honeytoken", 1, 1 + len(HONEY))
    assert sec.scanner.find("ghp_rawtoken!") == Hit("credential", 0, 12)
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    assert load_secrets(empty).routes == {} and load_secrets(empty).honeytokens == ()


# -- audit helpers -----------------------------------------------------------------------------------------
def test_cap() -> None:
    assert cap("abc", 3) == "abc"
    assert cap("abcd", 3) == "abc...[+1 chars]"
    assert cap("x" * 10, 4) == "xxxx...[+6 chars]"


def test_timer_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(audit_mod.time, "monotonic", lambda: now[0])
    t = Timer()
    now[0] = 100.12345
    assert t.ms() == 123.5


def test_counts_and_summaries(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl", bottle="b")
    for i in range(25):
        log.count("proxy", ("deny", f"reason {i:02d}"))
    log.count("proxy", ("deny", "reason 00"))
    log.flush_summaries()
    log.flush_summaries()  # nothing new: no second line
    log.close()
    (line,) = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert line["kind"] == "summary" and line["source"] == "proxy" and line["suppressed"] == 26
    assert len(line["counts"]) == 20 and line["counts"][0] == {"decision": "deny", "reason": "reason 00", "count": 2}
    assert line["note"] == "over the audit budget: counted, not logged one by one"


def test_budget_refills_at_its_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [10.0]
    monkeypatch.setattr(audit_mod.time, "monotonic", lambda: now[0])
    b = Budget(rate=100, burst=300, stamp=10.0)
    assert b.take(300) and not b.take(1)
    now[0] += 1.0
    assert b.take(100) and not b.take(1)
    now[0] += 10.0
    assert b.take(300) and not b.take(1)  # never more than the burst


def test_a_failed_log_is_retried_once_a_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [50.0]
    monkeypatch.setattr(audit_mod.time, "monotonic", lambda: now[0])
    log = AuditLog(tmp_path / "a.jsonl", bottle="b")
    log.failed = True
    log._retried = 49.5
    assert not log.can_record()  # tried half a second ago: not again yet
    now[0] = 50.5
    assert log.can_record() and not log.failed  # a second later the reserve is taken again
    log.low = True
    log._fallocate = None
    log._retried = 0.0
    log.failed = True
    assert not log.can_record()
    log.close()


def test_a_write_failure_is_said_once_and_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = AuditLog(tmp_path / "a.jsonl", bottle="b")
    log._fail(OSError(28, "No space left on device"))
    log._fail(OSError(28, "No space left on device"))
    log._retried = time.monotonic()
    assert log.failed is True and not log.can_record()
    err = capsys.readouterr().err
    assert err.count("audit log write failed (No space left on device): refusing new requests") == 1
    log.close()


# -- host spellings and addresses --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("abc.def", "abc.def"),  # hex letters without a digit: a name
        ("face.example", "face.example"),
        ("1.example", "1.example"),
        ("", ""),
    ],
)
def test_legacy_ipv4_spellings(spelling: str, canonical: str) -> None:
    assert normalise_host(spelling) == canonical


@pytest.mark.parametrize(
    ("addr", "public"),
    [
        ("2001::5efe:c0a8:101", False),  # Teredo carrying 63.255.254.254 (its server, public) ... see below
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8: judged as 8.8.8.8
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("2002:0808:0808::", True),  # 6to4 of 8.8.8.8
    ],
)
def test_wrapped_addresses_are_judged_as_what_they_carry(addr: str, public: bool) -> None:
    if addr.startswith("2001::"):
        # Teredo: ipaddress gives (server, client); the client is the inverted last 32 bits.
        import ipaddress

        assert ipaddress.IPv6Address(addr).teredo is not None
        client = str(ipaddress.IPv6Address(addr).teredo[1])  # type: ignore[index]
        assert is_public_address(addr) is is_public_address(client)
        return
    assert is_public_address(addr) is public


def test_policy_from_dict_defaults_and_local_names() -> None:
    p = Policy.from_dict({"local_names": {"DB.Bottle.": "10.0.0.9"}})
    assert p.bottle == "" and p.local_names == {"db.bottle": "10.0.0.9"} and p.allow == () and p.deny == ()
    assert Policy.from_dict(p.to_dict()) == p
    assert time.monotonic() > 0
