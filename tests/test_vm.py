"""The VM side: a real QEMU guest booted from the containers' own image."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from minicontainer.container import run
from minicontainer.errors import InvalidArgument, Timeout, VMError
from minicontainer.rootfs import default_rootfs
from minicontainer.vm import VM
from minicontainer.vm.initramfs import pack_initramfs
from minicontainer.vm.kernel import Kernel
from minicontainer.vm.qemu import accelerator


def test_the_initramfs_is_a_newc_archive_that_cpio_reads(tmp_path):
    archive = tmp_path / "initramfs.gz"
    archive.write_bytes(pack_initramfs(default_rootfs(), {"init": b"#!/bin/sh\n"}))
    listing = subprocess.run(f"zcat {archive} | busybox cpio -t", shell=True,
                             capture_output=True, text=True).stdout.split()
    assert {"init", "bin/busybox", "bin/sh", "etc/passwd"} <= set(listing)


def test_the_vm_runs_a_command_on_the_same_image_and_reports_its_exit_code():
    with VM(memory="128M") as vm:
        assert vm.run("echo hello; exit 3") == (3, "hello\n")
    with VM(memory="128M") as vm:
        release = (default_rootfs() / "etc/os-release").read_text()
        assert vm.run("cat /etc/os-release") == (0, release)
    assert vm.process.returncode is not None, "QEMU ends with the guest"


def test_boot_time_is_split_into_qemu_kernel_and_init():
    with VM(memory="128M") as vm:
        boot = vm.boot()
        assert vm.process.poll() is None, "booted without a command: it stays up"
    assert vm.process.returncode is not None, "stop() ends QEMU"
    assert 0 < boot.kernel and 0 < boot.init and 0 < boot.qemu_start
    assert boot.total == pytest.approx(boot.qemu_start + boot.kernel + boot.init)


def test_the_vm_has_its_own_kernel_instance_while_a_container_shares_the_hosts():
    host_boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with VM() as vm:
        guest_boot_id = vm.run("cat /proc/sys/kernel/random/boot_id")[1].strip()
    assert len(guest_boot_id) == 36 and guest_boot_id != host_boot_id
    assert run("cat /proc/sys/kernel/random/boot_id").stdout.strip() == host_boot_id


def test_guest_memory_follows_the_memory_argument():
    def mem_total_kb(memory: str) -> int:
        with VM(memory=memory) as vm:
            return int(vm.run("grep MemTotal /proc/meminfo")[1].split()[1])
    small, large = mem_total_kb("96M"), mem_total_kb("256M")
    assert small < 96 * 1024 and large < 256 * 1024      # the kernel keeps some for itself
    assert large - small == pytest.approx(160 * 1024, rel=0.05), "the extra RAM is all there"


def test_without_usable_kvm_the_vm_falls_back_to_tcg_and_says_why():
    accel, why = accelerator()
    flags = Path("/proc/cpuinfo").read_text()
    if " vmx" in flags or " svm" in flags:
        pytest.skip("this machine can virtualize: the KVM path is taken")
    assert accel == "tcg" and "vmx/svm" in why
    with VM() as vm:
        assert vm.accel == "tcg"
        vm.boot()
    with pytest.raises(VMError, match="KVM is not usable here"):
        VM(accel="kvm")


def test_a_corrupt_kernel_is_a_clear_error(tmp_path):
    bad = tmp_path / "vmlinuz"
    bad.write_bytes(b"not a kernel" * 1000)
    with VM(machine="q35-bzimage", kernel=Kernel(None, bad, None, "bad", "test")) as vm:
        with pytest.raises(VMError, match="QEMU exited"):
            vm.boot(timeout=60)


def test_a_missing_kernel_names_the_setup_step(monkeypatch, tmp_path):
    monkeypatch.setenv("MINICONTAINER_CACHE", str(tmp_path))
    monkeypatch.setenv("MINICONTAINER_KERNEL", str(tmp_path / "nowhere"))
    with pytest.raises(VMError, match="not a file"):
        VM()
    monkeypatch.delenv("MINICONTAINER_KERNEL")
    if not Path(f"/boot/vmlinuz-{__import__('os').uname().release}").exists():
        with pytest.raises(VMError, match="make setup"):
            VM()


def test_a_boot_that_takes_too_long_is_stopped_and_reported():
    with VM(machine="q35-bzimage") as vm:
        with pytest.raises(Timeout, match="did not answer within 0.5 s"):
            vm.boot(timeout=0.5)
    assert vm.process.returncode is not None


@pytest.mark.parametrize("options, message", [({"memory": "16M"}, "too small"),
                                              ({"memory": "lots"}, "invalid VM memory"),
                                              ({"cpus": 0}, "invalid cpus"),
                                              ({"accel": "warp"}, "invalid accel"),
                                              ({"machine": "vax"}, "invalid machine")])
def test_bad_vm_arguments_are_refused(options, message):
    with pytest.raises(InvalidArgument, match=message):
        VM(**options)
