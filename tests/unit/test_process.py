from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from claude_bottle import process
from claude_bottle.errors import BackendError


def test_run_captures_and_never_raises_on_exit(fake_exe: Callable[[str, str], Path]) -> None:
    fake_exe("tool", "print('out', sys.argv[1:]); print('bad thing', file=sys.stderr); sys.exit(4)")
    r = process.run(["tool", "a b", "--x"])
    assert (r.returncode, r.ok) == (4, False)
    assert r.stdout.strip() == "out ['a b', '--x']"  # argv passed as a list: no shell splitting
    with pytest.raises(BackendError, match=r"doing it failed \(exit 4\): bad thing"):
        process.check(r, "doing it")


def test_input_goes_to_stdin(fake_exe: Callable[[str, str], Path]) -> None:
    fake_exe("cat2", "sys.stdout.write(sys.stdin.read().upper())")
    assert process.run(["cat2"], input="secret").stdout == "SECRET"


def test_missing_tool_names_the_fix() -> None:
    with pytest.raises(BackendError, match="`no-such-tool-xyz` not found"):
        process.run(["no-such-tool-xyz"])


def test_redaction() -> None:
    argv = ["docker", "run", "-e", "ANTHROPIC_API_KEY=sk-ant-123", "-e", "FOO=bar", "GITHUB_TOKEN=x"]
    red = process.redact_argv(argv)
    assert "sk-ant-123" not in " ".join(red) and "FOO=bar" in red and "GITHUB_TOKEN=***" in red


def test_streaming_lines(fake_exe: Callable[[str, str], Path]) -> None:
    fake_exe("talk", "print('one'); print('two', file=sys.stderr, flush=True); print('three')")
    seen: list[str] = []
    r = process.run_streaming(["talk"], seen.append)
    assert r.ok and sorted(seen) == ["one", "three", "two"]
