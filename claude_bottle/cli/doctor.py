"""`claude-bottle doctor`: is this machine ready? One line per check of every backend, with the fix."""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape

from claude_bottle.backend import DEFAULT_BACKEND
from claude_bottle.cli._common import add_manifest_arg, err, out


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check the engine, compose, images and KVM (every backend)")
    add_manifest_arg(p)
    p.set_defaults(run=run)


def _base_images(args: argparse.Namespace) -> list[str]:
    """The base images the manifest here names (only read for their names: nothing in it is used, so it
    need not be trusted); none when there is no readable manifest."""
    from claude_bottle.bottle.state import bottle_home
    from claude_bottle.errors import BottleError
    from claude_bottle.manifest import find_manifest, load_manifest

    try:
        path = args.manifest or find_manifest(home=bottle_home())
        manifest = load_manifest(path)
    except BottleError as exc:
        err.print(f"[dim]note: checking the default base image ({escape(str(exc))})[/]")
        return []
    out.print(f"manifest: {escape(str(manifest.path))}")
    args.wants_gvisor = any(b.isolation == "gvisor" for b in manifest.bottles.values())
    return sorted({b.base_image for b in manifest.bottles.values()})


def run(args: argparse.Namespace) -> int:
    from claude_bottle.work.upkeep import doctor_checks, host_checks

    required_ok = True
    out.print("this host:")
    for c in host_checks():
        mark = "[green]ok[/]  " if c.ok else "[yellow]warn[/]"
        fix = "" if c.ok else f"  -> {escape(c.fix)}"
        out.print(f"  {mark} {c.name}: {escape(c.detail)}{fix}")
    images = _base_images(args)
    for name, found in doctor_checks(images):
        checks = list(found)
        out.print(f"{escape(name)} backend:")
        for c in checks:
            mark = "[green]ok[/]  " if c.ok else "[red]fail[/]"
            fix = "" if c.ok else f"  -> {escape(c.fix)}"
            out.print(f"  {mark} {c.name}: {escape(c.detail)}{fix}")
        if name == DEFAULT_BACKEND:
            # gVisor's checks count when the manifest here asks for it (isolation = "gvisor").
            optional = {"kvm"} | (
                set()
                if getattr(args, "wants_gvisor", False)
                else {"gvisor runtime", "gvisor probe", "gvisor file status"}
            )
            required_ok = all(c.ok for c in checks if c.name not in optional)
    return 0 if required_ok else 3
