"""Audit log: one JSON line per decision, appended and flushed as it happens."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

__all__ = ["AuditLog"]


class AuditLog:
    def __init__(self, path: Path | None, *, bottle: str = "") -> None:
        self.bottle = bottle
        self._file: IO[str] = path.open("a", encoding="utf-8") if path else sys.stdout

    def write(self, **fields: Any) -> None:
        line: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "bottle": self.bottle,
        }
        line.update(fields)
        self._file.write(json.dumps(line, separators=(",", ":"), sort_keys=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not sys.stdout:
            self._file.close()


class Timer:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def ms(self) -> float:
        return round((time.monotonic() - self.start) * 1000, 1)
