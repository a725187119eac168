"""What this host offers a microVM: /dev/kvm the VMM's uid can open, and virtualisation that can run the
guest kernel. Read by doctor and by the SDK's boot-failure explanations (no SDK needed here)."""

from __future__ import annotations

import os
import platform
import stat
from pathlib import Path

from claude_bottle.backend import Check

__all__ = ["KVM", "KVM_FIX", "VMM_UID", "host_virtualisation", "kvm_check"]

KVM = Path("/dev/kvm")
VMM_UID = 2000000  # smol-vmm drops to a per-VM uid from here before it opens /dev/kvm
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
