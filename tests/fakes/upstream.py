"""A fake "internet" web host for tests: static files, a fake Anthropic Messages API, a request log.

Run in a container on the test network: python3 upstream.py --port 80 --root /srv --name allowed
- GET /_requests            -> every request seen so far (method, path, headers, JSON body), as JSON
- POST /v1/messages         -> a Messages API reply, streamed (SSE) when the request says stream: true.
  The reply is a Bash tool_use when the last user text contains "TOOL: <command>" and no tool result
  has come back yet; otherwise a text reply that quotes the user's first words. Enough for `claude -p`
  to complete a plain turn and a tool-use turn.
- POST /_hold?SECONDS       -> reads the body, records it, then holds the connection that long unanswered
- GET /_reset               -> resets the connection (RST) without answering, recording nothing
- GET /_soak                -> "ok", recording nothing (for load tests)
- anything else under GET   -> a file from --root, or "hello from NAME"
- UDP port 53               -> echoes each datagram back ("echo:" + data)
Standard library only, so it runs in any python3 image.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LOCK = threading.Lock()
SEEN: list[dict[str, Any]] = []


def last_user_text(messages: list[dict[str, Any]]) -> tuple[str, bool]:
    """The latest user text, and whether the latest user turn carries a tool result."""
    for msg in reversed(messages):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content, False
        # Claude Code adds <system-reminder> blocks of its own to the user's turn: the user's words are the rest.
        texts = [
            c.get("text", "")
            for c in content
            if c.get("type") == "text" and not c.get("text", "").lstrip().startswith("<system-reminder>")
        ]
        has_result = any(c.get("type") == "tool_result" for c in content)
        return "\n".join(texts), has_result
    return "", False


def reply_blocks(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    text, has_result = last_user_text(body.get("messages", []))
    all_text = json.dumps(body.get("messages", []))
    if "TOOL:" in text and not has_result:
        command = text.split("TOOL:", 1)[1].strip().splitlines()[0]
        return [
            {
                "type": "tool_use",
                "id": f"toolu_{int(time.time() * 1000)}",
                "name": "Bash",
                "input": {"command": command, "description": "run the requested command"},
            }
        ], "tool_use"
    if has_result:
        return [{"type": "text", "text": "FAKE-UPSTREAM: the command ran."}], "end_turn"
    words = " ".join(text.split()[:6])
    turns = sum(1 for m in body.get("messages", []) if m.get("role") == "user")
    remembered = "REMEMBERED" if "FIRST-SESSION-MARKER" in all_text and turns > 1 else ""
    return [{"type": "text", "text": f"FAKE-UPSTREAM reply to: {words} {remembered}".strip()}], "end_turn"


class Handler(BaseHTTPRequestHandler):
    server_version = "fake-upstream/1"
    protocol_version = "HTTP/1.1"
    root: Path
    name: str

    def log_message(self, *_: Any) -> None:
        pass

    def _record(self, body: bytes) -> Any:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = body.decode("latin-1")
        with LOCK:
            SEEN.append(
                {"method": self.command, "path": self.path, "headers": dict(self.headers.items()), "body": parsed}
            )
        return parsed

    def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/_reset"):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.wfile, self.close_connection = io.BytesIO(), True  # nothing more is written
            return
        if self.path.startswith("/_soak"):
            self._send(200, b"ok\n")
            return
        if self.path == "/_requests":
            with LOCK:
                data = json.dumps(SEEN).encode()
            self._send(200, data, "application/json")
            return
        self._record(b"")
        target = (self.root / self.path.split("?")[0].lstrip("/")).resolve()
        if self.root in target.parents and target.is_file():
            self._send(200, target.read_bytes(), "application/octet-stream")
        elif self.path.split("?")[0] in ("/", "/index.html"):
            self._send(200, f"hello from {self.name}\n".encode())
        else:
            self._send(404, b"not found\n")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self._record(self.rfile.read(length))
        if self.path.startswith("/_hold"):
            time.sleep(float(self.path.partition("?")[2] or 30))
            self._send(200, b"held\n")
            return
        if not self.path.startswith("/v1/messages") or not isinstance(body, dict):
            self._send(200, b"ok\n")
            return
        if self.path.startswith("/v1/messages/count_tokens"):
            self._send(200, b'{"input_tokens": 10}', "application/json")
            return
        blocks, stop = reply_blocks(body)
        model = body.get("model", "claude-fake")
        message = {
            "id": f"msg_fake_{len(SEEN)}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5},
        }
        if not body.get("stream"):
            self._send(200, json.dumps(message).encode(), "application/json")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()

        def event(kind: str, data: dict[str, Any]) -> None:
            self.wfile.write(f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode())
            self.wfile.flush()

        event(
            "message_start",
            {
                "message": {
                    **message,
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": 10, "output_tokens": 1},
                }
            },
        )
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                event("content_block_start", {"index": i, "content_block": {"type": "text", "text": ""}})
                for piece in (block["text"][: len(block["text"]) // 2], block["text"][len(block["text"]) // 2 :]):
                    event("content_block_delta", {"index": i, "delta": {"type": "text_delta", "text": piece}})
            else:
                event("content_block_start", {"index": i, "content_block": {**block, "input": {}}})
                event(
                    "content_block_delta",
                    {"index": i, "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}},
                )
            event("content_block_stop", {"index": i})
        event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 5}})
        event("message_stop", {})
        self.close_connection = True


def udp_echo(port: int) -> None:
    """Echo UDP datagrams: a listener a control container can reach, so "blocked" from a bottle means blocked."""

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(b"echo:" + data, addr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--root", default="/srv")
    parser.add_argument("--name", default="upstream")
    args = parser.parse_args()
    Handler.root = Path(args.root).resolve()
    Handler.name = args.name
    threading.Thread(target=udp_echo, args=(53,), daemon=True).start()
    # A listen backlog fit for the soak (http.server's default of 5 resets bursts: the guard would then
    # rightly answer 502 for an upstream that dropped a connection it was sent).
    ThreadingHTTPServer.request_queue_size = 1024
    ThreadingHTTPServer(("0.0.0.0", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
