"""`claude-bottle doctor`: is this machine ready? One line per check, with the fix."""

from __future__ import annotations

import argparse
import os
from typing import Any

from rich.markup import escape

from ..backend import Check, get_bottle_backend
from ._common import out


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check the engine, compose, images and KVM")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    checks = get_bottle_backend("docker").doctor()
    kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
    checks.append(
        Check(
            "kvm",
            kvm,
            "/dev/kvm usable" if kvm else "/dev/kvm missing",
            "only the smolmachines backend needs it: enable virtualisation / load kvm",
        )
    )
    for c in checks:
        mark = "[green]ok[/]  " if c.ok else "[red]fail[/]"
        fix = "" if c.ok else f"  -> {escape(c.fix)}"
        out.print(f"{mark} {c.name}: {escape(c.detail)}{fix}")
    required = [c for c in checks if c.name != "kvm"]
    return 0 if all(c.ok for c in required) else 3
