"""The VM side (the part the cgroup v2 tests need so far): a real QEMU guest."""
from __future__ import annotations

import subprocess
from pathlib import Path

from minicontainer.container import run
from minicontainer.rootfs import default_rootfs
from minicontainer.vm import VM, accelerator, pack_initramfs


def test_the_initramfs_is_a_newc_archive_that_cpio_reads(tmp_path):
    archive = tmp_path / "initramfs.gz"
    archive.write_bytes(pack_initramfs(default_rootfs(), {"init": b"#!/bin/sh\n"}))
    listing = subprocess.run(f"zcat {archive} | busybox cpio -t", shell=True,
                             capture_output=True, text=True).stdout.split()
    assert {"init", "bin/busybox", "bin/sh", "etc/passwd"} <= set(listing)


def test_the_vm_has_its_own_kernel_instance_while_a_container_shares_the_hosts():
    host_boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with VM("cat /proc/sys/kernel/random/boot_id", memory="128M") as vm:
        code, console = vm.start().wait(timeout=120)
    assert code == 0
    guest_boot_id = console.split()[-1]
    assert len(guest_boot_id) == 36 and guest_boot_id != host_boot_id
    assert run("cat /proc/sys/kernel/random/boot_id").stdout.strip() == host_boot_id


def test_the_vm_reports_the_commands_exit_code():
    with VM("exit 7", memory="128M") as vm:
        assert vm.start().wait(timeout=120)[0] == 7


def test_kvm_is_used_only_where_the_cpu_can_virtualize():
    accel, why = accelerator()
    flags = Path("/proc/cpuinfo").read_text()
    if " vmx" not in flags and " svm" not in flags:
        assert accel == "tcg" and why
