"""Can this machine run microVM bottles? The SDK and its version, /dev/kvm usable by the VMM's unprivileged
uid, hardware virtualisation, the engine's own host check, and a short boot probe of a bare machine.

The probe boots for real (up to about 20 s where it fails), in a child process with a hard timeout, so its
result is remembered per host (SDK version, kernel, /dev/kvm, CPU flags) and run again only when one
changes. Every result is one line, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import platform
import secrets
import sys
import time

from claude_bottle import process
from claude_bottle.backend import Check
from claude_bottle.backend.smolmachines import sdk
from claude_bottle.backend.smolmachines.host import KVM, KVM_FIX, host_virtualisation, kvm_check
from claude_bottle.bottle.state import bottle_home, write_private
from claude_bottle.errors import BackendError
from claude_bottle.identity import namespace

__all__ = ["checks", "host_virtualisation", "kvm_check"]

PROBE_TIMEOUT = 90.0

_PROBE = """
import sys, smol
name = sys.argv[1]
conn = smol.ConnectOptions(target="local", wait_for_ports=False)
try:
    cfg = smol.MachineConfig(name=name, persistent=False, ready_timeout_seconds=60, wait_for_ports=False)
    smol.Machine.create(cfg, conn)
    m = smol.Machine.connect(name, conn)
    r = m.exec(["true"])
    print("ok" if r.exit_code == 0 else f"exec exited {r.exit_code}")
except Exception as exc:
    print(" ".join(str(exc).split())[:300] or type(exc).__name__)
finally:
    try:
        smol.Machine.delete_by_name(name, conn)
    except Exception:
        pass
"""


def _host_key(version: str) -> str:
    parts = [version, platform.release()]
    try:
        st = KVM.stat()
        parts += [str(st.st_mode), str(st.st_rdev)]
    except OSError:
        parts.append("no-kvm")
    with_flags = host_virtualisation()
    parts.append(with_flags.detail)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def boot_probe(version: str) -> Check:
    """A bare machine booted and asked to run `true`, remembered per host."""
    cache = bottle_home() / "cache" / "smolmachines-probe.json"
    key = _host_key(version)
    try:
        known = json.loads(cache.read_text())
        if known.get("key") == key:
            return Check("boot probe", bool(known["ok"]), str(known["detail"]) + " (remembered)", known.get("fix", ""))
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    name = f"{namespace()}-doctor-{secrets.token_hex(3)}"
    began = time.monotonic()
    try:
        out = process.run([sys.executable, "-c", _PROBE, name], timeout=PROBE_TIMEOUT).stdout.strip()
    except BackendError:
        out = f"no answer within {PROBE_TIMEOUT:.0f}s"
    took = time.monotonic() - began
    ok = out == "ok"
    virt = host_virtualisation()
    if ok:
        check = Check("boot probe", True, f"a bare microVM booted and ran a command in {took:.1f}s")
    elif not virt.ok:
        check = Check("boot probe", False, f"failed after {took:.0f}s: {virt.detail}", virt.fix)
    else:
        check = Check("boot probe", False, f"failed after {took:.0f}s: {out.splitlines()[-1] if out else '?'}", KVM_FIX)
    cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(cache, json.dumps({"key": key, "ok": check.ok, "detail": check.detail, "fix": check.fix}))
    return check


def checks() -> list[Check]:
    if not sdk.installed():
        return [Check("smolmachines SDK", False, "not installed (an optional extra)", sdk.INSTALL)]
    vm = sdk.Vm()
    out = [Check("smolmachines SDK", True, vm.version())]
    kvm = kvm_check()
    virt = host_virtualisation()
    ok, code, reason = vm.availability()
    out += [kvm, virt, Check("engine host check", ok, "passed" if ok else f"{code}: {reason}", KVM_FIX)]
    if kvm.ok and ok:
        out.append(boot_probe(vm.version()))
    else:
        out.append(Check("boot probe", False, "not run: /dev/kvm is not usable", KVM_FIX))
    return out
