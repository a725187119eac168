"""Can this machine run microVM bottles? The SDK and its version, /dev/kvm usable by the VMM's unprivileged
uid, hardware virtualisation, the engine's own host check, and a short boot probe of a bare machine.

The probe boots for real (up to about 20 s where it fails), in a child process with a hard timeout, so its
result is remembered per host (SDK version, kernel, /dev/kvm, CPU flags) and run again only when one
changes. Every result is one line, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path

from claude_bottle.backend import Check
from claude_bottle.backend.smolmachines import sdk
from claude_bottle.bottle.state import bottle_home, write_private
from claude_bottle.identity import namespace

__all__ = ["checks", "host_virtualisation"]

KVM = Path("/dev/kvm")
VMM_UID = 2000000  # smol-vmm drops to a per-VM uid from here before it opens /dev/kvm
PROBE_TIMEOUT = 90.0
KVM_FIX = (
    "let the VMM's unprivileged uid open it: chmod 0666 /dev/kvm (a udev rule makes it last: "
    'KERNEL=="kvm", MODE="0666"), or add that uid to the device\'s group'
)


def kvm_check(dev: Path = KVM) -> Check:
    try:
        st = dev.stat()
    except OSError:
        return Check("/dev/kvm", False, "missing", "enable virtualisation in the firmware and load kvm_intel/kvm_amd")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o006 == 0o006:
        return Check("/dev/kvm", True, f"present, mode {mode:o}: the VMM's uid can open it")
    if os.environ.get("SMOLVM_VM_UID_DROP") == "off" and os.access(dev, os.R_OK | os.W_OK):
        return Check("/dev/kvm", True, f"mode {mode:o}; SMOLVM_VM_UID_DROP=off: the VMM keeps this uid")
    return Check("/dev/kvm", False, f"mode {mode:o}: the VMM's unprivileged uid ({VMM_UID}+) cannot open it", KVM_FIX)


def host_virtualisation(cpuinfo: Path = Path("/proc/cpuinfo"), modules: Path = Path("/sys/module")) -> Check:
    """Hardware virtualisation (vmx/svm) or nested PVM, which cannot run the guest kernel (measured: the
    guest dies at `lock cmpxchg16b` with `kvm-pvm: INTERNAL_ERROR in batch emul`)."""
    try:
        flags = {f for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for f in line.split()}
    except OSError:
        flags = set()
    if platform.system() != "Linux":
        return Check("virtualisation", True, platform.system())
    if flags & {"vmx", "svm"}:
        return Check("virtualisation", True, "hardware (vmx/svm)")
    if (modules / "kvm_pvm").exists():
        return Check(
            "virtualisation",
            False,
            "this host's KVM is nested PVM (kvm_pvm, no vmx/svm): it cannot run the guest kernel",
            "run microVM bottles on a host with hardware virtualisation (Linux with vmx/svm, or Apple Silicon)",
        )
    return Check("virtualisation", False, "no vmx/svm CPU flag", "enable VT-x/AMD-V in the firmware")


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
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, name], capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False
        ).stdout.strip()
    except subprocess.TimeoutExpired:
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
