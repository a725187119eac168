"""A CONNECT tunnel's first bytes judged before anything is relayed: a whole TLS ClientHello whose SNI names
the allowed host (none only for an IP host), or an SSH banner line; anything else is a refusal."""

from __future__ import annotations

from claude_bottle.guard.policy import is_ip, normalise_host
from claude_bottle.guard.tls import NEED_MORE, client_hello_sni

__all__ = ["NEED", "SNI_MISMATCH", "inspect_tunnel", "judge_tunnel"]

MAX_FIRST_BYTES = 16 * 1024 + 2048  # one TLS record: a ClientHello must fit in it


MAX_SSH_BANNER = 255


SNI_MISMATCH = "sni-mismatch"


NEED = object()  # judge_tunnel: not enough bytes yet


def judge_tunnel(buf: bytes, host: str, *, eof: bool = False) -> tuple[object, str | None]:
    """Judge the first bytes a client sends into a tunnel before any of them is relayed. Returns
    (NEED, None) for "need more", ("allow", detail) or ("deny", reason); detail/SNI for the log.

    Allowed: a whole TLS ClientHello whose SNI names the CONNECT host (no SNI only for an IP-literal
    host), or a whole SSH identification line. Anything else, or the client closing before the first
    bytes could be judged, is refused: plain HTTP in a tunnel could name any virtual host on the
    allowed address, request after request, unscanned."""
    if not buf:
        return ("deny", "tunnel-closed-before-first-bytes") if eof else (NEED, None)
    if buf[:1] == b"\x16":
        try:
            sni = client_hello_sni(buf)
        except ValueError:
            return "deny", "bad-client-hello"
        if sni is NEED_MORE:
            if eof or len(buf) > MAX_FIRST_BYTES:
                return "deny", "incomplete-client-hello"
            return NEED, None
        if sni is None:
            return ("allow", None) if is_ip(host) else ("deny", "no-sni")
        if normalise_host(str(sni)) != host:
            return "deny", SNI_MISMATCH
        return "allow", str(sni)
    if b"SSH-2.0-".startswith(buf[:8]) and len(buf) < 8:
        return ("deny", "incomplete-ssh-banner") if eof else (NEED, None)
    if buf.startswith(b"SSH-2.0-"):
        end = buf.find(b"\n")
        if end < 0:
            if eof or len(buf) > MAX_SSH_BANNER:
                return "deny", "incomplete-ssh-banner"
            return NEED, None
        line = buf[: end + 1].rstrip(b"\r\n")
        if end + 1 > MAX_SSH_BANNER or any(not 0x20 <= c < 0x7F for c in line):
            return "deny", "bad-ssh-banner"
        return "allow", None
    return "deny", "tunnel-not-tls"


def inspect_tunnel(buf: bytes, host: str) -> str | None:
    """Compatibility wrapper: a refusal reason, None when fine; LookupError for "need more"."""
    verdict, detail = judge_tunnel(buf, host)
    if verdict is NEED:
        raise LookupError
    return detail if verdict == "deny" else None
