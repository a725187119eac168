"""A real git smart-HTTP server for the tests: Debian's `git http-backend` (CGI) behind a small web server.

Serves the bare repositories under --root, pushes included, to a client that presents the token (as
HTTP Basic `x-access-token:TOKEN`, what the guard's GitHub route adds); anyone else gets 401.
`GET /_refs/NAME.git` lists a repository's refs (what the test checks happened), `GET /_requests` what was
asked. Standard library and git only: runs in a Debian image with git installed.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

SEEN: list[dict[str, str]] = []
LOCK = threading.Lock()


def make_repo(root: Path, name: str) -> None:
    env = {"GIT_AUTHOR_NAME": "s", "GIT_AUTHOR_EMAIL": "s@s", "GIT_COMMITTER_NAME": "s", "GIT_COMMITTER_EMAIL": "s@s",
           "PATH": "/usr/bin:/bin", "HOME": "/tmp"}  # fmt: skip
    work = root / f"{name}-work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True, env=env)
    (work / "README").write_text("served by git http-backend\n")
    subprocess.run(["git", "-C", str(work), "add", "README"], check=True, env=env)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "init"], check=True, env=env)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / f"{name}.git")], check=True, env=env)


class Handler(BaseHTTPRequestHandler):
    root: Path
    auth: str

    def log_message(self, *_args: object) -> None:
        pass

    def _reply(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/_requests":
            with LOCK:
                self._reply(200, json.dumps(SEEN).encode())
            return
        if url.path.startswith("/_refs/"):
            repo = self.root / Path(url.path).name
            refs = subprocess.run(["git", "-C", str(repo), "for-each-ref", "--format=%(refname) %(objectname)"],
                                  capture_output=True, text=True, check=False).stdout  # fmt: skip
            self._reply(200, json.dumps(dict(ln.split(" ", 1) for ln in refs.splitlines())).encode())
            return
        body = self._body() if self.command == "POST" else b""
        with LOCK:
            SEEN.append(
                {"method": self.command, "path": self.path, "authorization": self.headers.get("Authorization", "")}
            )
        if self.headers.get("Authorization") != self.auth:
            self._reply(401, b"token required\n", {"WWW-Authenticate": 'Basic realm="git"'})
            return
        env = {
            "PATH": "/usr/bin:/bin",
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "agent",  # authenticated: http-backend then enables receive-pack
            "REMOTE_ADDR": self.client_address[0],
            "GIT_HTTP_MAX_REQUEST_BUFFER": "100M",
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        cgi = subprocess.run(["git", "http-backend"], input=body, capture_output=True, env=env, check=False)
        head, _, payload = cgi.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = cgi.stdout.partition(b"\n\n")
        code, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                code = int(value.strip().split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        headers.pop("Content-Length", None)
        self._reply(code, payload, headers)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--root", default="/srv/git")
    ap.add_argument("--token", required=True)
    ap.add_argument("--repo", action="append", default=[])
    args = ap.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    for name in args.repo:
        make_repo(root, name)
    Handler.root = root
    Handler.auth = "Basic " + base64.b64encode(f"x-access-token:{args.token}".encode()).decode()
    print(f"git server on :{args.port}", file=sys.stderr, flush=True)
    ThreadingHTTPServer(("0.0.0.0", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
