"""The operator's terminal, kept the operator's: what a bottle prints is filtered before it reaches it.

Everything that comes out of a bottle was shaped by the agent: tmux in the bottle runs as the agent's
user (it can set `allow-passthrough`, `set-clipboard` or anything else on the server the operator
attaches to), and so does whatever writes to the container's log. A terminal obeys escape sequences
that set the clipboard (OSC 52) or read it back, set the title and report it, change fonts and colours,
or hand data to the terminal program itself (DCS/APC/PM/SOS, iTerm2's OSC 1337). So:

- `logs` shows control characters escaped (`\\x1b`), unless the operator asks for raw output;
- attached sessions (`attach`, an interactive `start`, `shell`) run on a pseudo-terminal of ours, and
  their output passes through `ScreenFilter`: text, cursor and colour control (CSI, except window
  reports/manipulation) and plain ESC sequences pass; OSC passes only for titles (sanitised) and
  colour queries; DCS, APC, PM, SOS and C1 controls never do.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import tty
from collections.abc import Callable, Sequence

__all__ = ["ScreenFilter", "escape_controls", "run_on_terminal"]

_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """Every control character (C0 but tab and newline, DEL, C1) as a visible escape."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


class LineEscaper:
    """escape_controls over a byte stream, decoding UTF-8 incrementally (bad bytes shown as \\xNN)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")

    def feed(self, data: bytes, final: bool = False) -> str:
        return escape_controls(self._decoder.decode(data, final))


# OSC numbers that may pass: titles (0, 1, 2) and colour queries/resets.
_OSC_TITLE = {b"0", b"1", b"2"}
_OSC_QUERY = {b"10", b"11", b"12", b"13", b"14", b"15", b"16", b"17", b"18", b"19"}
_OSC_RESET = {b"104", b"110", b"111", b"112", b"113", b"114", b"115", b"116", b"117", b"118", b"119"}
MAX_SEQUENCE = 4096  # a longer escape sequence is dropped whole


class ScreenFilter:
    """A byte-stream filter for terminal output (state kept across reads)."""

    def __init__(self) -> None:
        self.state = "ground"
        self.seq = bytearray()

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            self._byte(b, out)
        return bytes(out)

    def _byte(self, b: int, out: bytearray) -> None:
        st = self.state
        if st == "ground":
            if b == 0x1B:
                self.state, self.seq = "esc", bytearray([b])
            elif b == 0xC2:
                self.state = "c2"  # maybe a C1 control encoded as UTF-8
            elif b < 0x20 and b not in (0x07, 0x08, 0x09, 0x0A, 0x0D, 0x0E, 0x0F):
                return  # other C0 controls have no business on the screen
            else:
                out.append(b)
            return
        if st == "c2":
            self.state = "ground"
            if 0x80 <= b <= 0x9F:
                return  # U+0080..U+009F: C1 controls (U+009B is CSI to some terminals)
            out.append(0xC2)
            self._byte(b, out)
            return
        self.seq.append(b)
        if len(self.seq) > MAX_SEQUENCE:
            self.state = "string-drop" if st in ("osc", "string", "string-drop") else "ground"
            self.seq = bytearray()
            return
        if st == "esc":
            if b == ord("["):
                self.state = "csi"
            elif b == ord("]"):
                self.state = "osc"
            elif b in (ord("P"), ord("_"), ord("^"), ord("X")):
                self.state = "string"  # DCS, APC, PM, SOS: dropped whole
            elif 0x20 <= b <= 0x2F:
                return  # intermediates
            elif 0x30 <= b <= 0x7E:
                out += self.seq
                self.state = "ground"
            else:
                self.state = "ground"  # a broken sequence: dropped
            return
        if st == "csi":
            if 0x40 <= b <= 0x7E:
                self.state = "ground"
                # Not XTWINOPS (`t`: reports the title, moves and resizes windows) nor media copy (`i`:
                # printer controller mode sends what follows to a printer command).
                if b not in (ord("t"), ord("i")):
                    out += self.seq
            elif not 0x20 <= b <= 0x3F:
                self.state = "ground"  # a control inside a CSI: dropped
            return
        if st in ("osc", "string", "string-drop"):
            if b == 0x07 or (b == ord("\\") and len(self.seq) >= 2 and self.seq[-2] == 0x1B):
                if st == "osc":
                    self._osc(bytes(self.seq), out)
                self.state = "ground"
                self.seq = bytearray()
            return

    @staticmethod
    def _osc(seq: bytes, out: bytearray) -> None:
        body = seq[2:-1] if seq.endswith(b"\x07") else seq[2:-2]
        num, _, arg = body.partition(b";")
        if num in _OSC_TITLE:
            title = bytes(c for c in arg if c >= 0x20 and c != 0x7F)[:256]
            out += b"\x1b]" + num + b";" + title + b"\x07"
        elif (num in _OSC_QUERY and arg == b"?") or (num in _OSC_RESET and not arg):
            out += seq


def run_on_terminal(
    argv: Sequence[str], *, env: dict[str, str] | None = None, done: Callable[[], bool] | None = None
) -> int:
    """Run argv on a pseudo-terminal of ours, this terminal's input passed through, its output filtered.
    Without a terminal on both ends there is nothing to protect: argv runs plainly. `done`, asked every
    0.2 s: the command is over though argv has not returned (argv is then ended)."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        plain = subprocess.Popen(list(argv), env=env)
        while done is not None:
            try:
                return plain.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                if done():
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        return plain.wait(timeout=1.0)  # the client's last output still on its way
                    plain.terminate()
                    break
        return plain.wait()
    master, slave = os.openpty()
    _copy_size(sys.stdin.fileno(), master)
    proc = subprocess.Popen(
        list(argv),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
        # The pseudo-terminal becomes the child's controlling terminal, so it hears about window resizes.
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # noqa: PLW1509 - no threads start here
    )
    os.close(slave)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    saved = termios.tcgetattr(stdin)
    old_winch = signal.signal(signal.SIGWINCH, lambda *_: _copy_size(stdin, master))
    screen = ScreenFilter()
    try:
        tty.setraw(stdin)
        while True:
            try:
                ready, _, _ = select.select([stdin, master], [], [], None if done is None else 0.2)
            except InterruptedError:
                continue
            if not ready and done is not None and done():
                proc.terminate()  # over inside: the client would wait for input that no longer goes anywhere
                break
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    break
                _write_all(stdout, screen.feed(data))
            if stdin in ready:
                data = os.read(stdin, 65536)
                if not data:
                    break
                _write_all(master, data)
    finally:
        termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old_winch)
        os.close(master)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.terminate()
        return proc.wait()


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _copy_size(src: int, dst: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)
