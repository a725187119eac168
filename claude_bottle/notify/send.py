"""Who hears of an event: each webhook gets a JSON POST signed with HMAC-SHA256 (the receiver checks it with
its copy of the secret), retried with backoff on its own thread; the desktop gets a notification.

The signature covers the timestamp and the body, `sha256=HEX(HMAC(secret, f"{timestamp}.{body}"))`, sent as
`X-Claude-Bottle-Signature` with `X-Claude-Bottle-Timestamp`: a receiver refuses a stale timestamp, so a
captured event cannot be replayed later. Nothing here ever blocks the bottle: the watcher is a process of
its own, and a receiver that does not answer costs that receiver's thread alone."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from claude_bottle.notify.settings import Settings, Webhook

log = logging.getLogger(__name__)

ATTEMPTS = 6
FIRST_WAIT = 1.0  # then 2, 4, 8, 16 s: about half a minute before a receiver is given up on
TIMEOUT = 10.0
SIGNATURE = "X-Claude-Bottle-Signature"
TIMESTAMP = "X-Claude-Bottle-Timestamp"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(
    secret: bytes, headers: Mapping[str, str], body: bytes, *, now: float | None = None, window: float = 300
) -> bool:
    """What a receiver does (and the tests): the signature matches and the timestamp is recent."""
    ts = headers.get(TIMESTAMP, "")
    if not ts.isdigit() or abs((now or time.time()) - int(ts)) > window:
        return False
    return hmac.compare_digest(headers.get(SIGNATURE, ""), sign(secret, ts, body))


def post(hook: Webhook, event: dict[str, Any], *, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Deliver one event, retrying with backoff on a failure or a 5xx/429; True once the receiver took it."""
    body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
    secret = hook.read_secret()
    wait = FIRST_WAIT
    for attempt in range(1, ATTEMPTS + 1):
        ts = str(int(time.time()))
        req = urllib.request.Request(  # noqa: S310 - the operator's own URL, http(s) checked in settings
            hook.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "claude-bottle", TIMESTAMP: ts,
                     SIGNATURE: sign(secret, ts, body), "X-Claude-Bottle-Event": str(event.get("event", ""))},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:  # noqa: S310
                if 200 <= r.status < 300:
                    return True
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code < 500 and exc.code != 429:
                log.warning("webhook %s refused event %s: HTTP %s", hook.url, event.get("id"), exc.code)
                return False  # the receiver said no: asking again would get the same answer
        except (OSError, ValueError) as exc:
            log.info("webhook %s: attempt %d: %s", hook.url, attempt, exc)
        if attempt < ATTEMPTS:
            sleep(wait)
            wait *= 2
    log.warning("webhook %s: event %s not delivered after %d attempts", hook.url, event.get("id"), ATTEMPTS)
    return False


def desktop(event: dict[str, Any]) -> None:
    exe = shutil.which("notify-send")
    if exe is None:
        return
    title = f"claude-bottle: {event['bottle']} {event['event']}"
    subprocess.run([exe, "--app-name=claude-bottle", title, str(event.get("summary", ""))], timeout=10, check=False)


def deliver(settings: Settings, event: dict[str, Any]) -> list[threading.Thread]:
    """Send the event everywhere it is wanted, each receiver on a thread of its own; returns the threads."""
    threads = []
    for hook in settings.notify.webhooks:
        if event["event"] in hook.events:
            t = threading.Thread(target=_quietly, args=(post, hook, event), daemon=True, name=f"webhook {hook.url}")
            t.start()
            threads.append(t)
    if settings.desktop:
        t = threading.Thread(target=_quietly, args=(desktop, event), daemon=True, name="desktop")
        t.start()
        threads.append(t)
    return threads


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - one receiver's failure is logged, never the watcher's end
        log.warning("notification failed: %s", exc)
