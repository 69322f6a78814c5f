"""A VM's life: boot QEMU from the containers' image, talk over its console, switch it off.

A container is host processes with a different view; a virtual machine is a whole
computer made of software (qemu.py), running a kernel of its own (kernel.py) that
boots, finds its devices and starts init — none of which a container does. `VM`
packs the image with an /init (initramfs.py), starts QEMU with its serial console on
a pipe, and reads what the guest prints: /init says "MC-INIT <uptime>" when the
kernel hands over, "MC-READY <uptime>" when it is ready, runs its command, prints
"MC-EXIT=<code>" and powers the machine off. The guest's uptime against the host's
clock tells where the boot time went (`Boot`). (Typing commands into a serial port
under TCG loses characters; a command baked into the initramfs cannot be lost.)

VM(network="mc-br0") gives the machine a network card on one of our bridges, the
containers' own (network.py): QEMU's virtio card is wired to a tap device in the
bridge, the guest's /init loads the card's driver and gives eth0 an address leased
from the bridge's pool. Containers and VMs then talk on one network; a container's
cable is a veth whose far end is in its namespace, a VM's is a tap whose far end is
QEMU, which turns the frames into a virtual PCI card's (see qemu.network_card_options).
What the guest sends enters the bridge as it is, with any MAC or IP address it likes,
as a container holding NET_RAW can send: Docker's bridge does not filter either, and
the same firewall rules keep both kinds of guests inside our bridges (network.py).
libvirt can add anti-spoofing rules on a VM's tap (nwfilter "clean-traffic"); we
leave them out, as Docker does, to keep one set of rules for both kinds.

VM(image="alpine") boots an image from the store instead (image.py): its layers merged
as the container's overlay shows them, packed once, with our own init and busybox on
top; the command runs in the image's /bin/sh, with its Env and WorkingDir.

Every VM is written down (state.write_vm) before anything of it exists, so that
cleanup.py can stop its QEMU if this process dies without stop().
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import network as networking
from .. import state
from ..arguments import NETWORK_NAME, check_vm_options
from ..errors import InvalidArgument, Timeout, VMError
from ..host import cpu
from ..images.config import check_workdir, environment_of, settings_of
from ..process import start_time
from ..spec import PATH
from . import qemu, snapshot
from .image import packed_image
from .initramfs import ANSWER, IDLE, IMAGE_INIT, guest_initramfs, image_init_archive
from .kernel import Kernel, find_kernel, kernel_dir

if TYPE_CHECKING:
    from ..images.store import Image


@dataclass
class Boot:
    """Where the boot time went, in seconds (host's wall clock and guest's uptime)."""

    total: float          # from starting QEMU to the guest's "ready"
    qemu_start: float     # QEMU and firmware, before the guest kernel's clock starts
    kernel: float         # the guest kernel, until it runs /init
    init: float           # /init, until ready


class VM:
    """A QEMU virtual machine booted from the containers' image.

        with VM(memory="128M") as vm:
            code, output = vm.run("uname -r")     # boot, run, power off

        with VM() as vm:
            vm.boot()                             # up and idle, until stop()

        with VM(image="alpine") as vm:           # an image from the store
            code, output = vm.run("cat /etc/os-release")

    host_files=True boots the guest into the host's own files instead (read-only,
    over 9p): the host's programs on the guest's kernel. network="mc-br0" plugs its
    network card into that bridge (as Container(network=...)); .address is its eth0's.
    """

    def __init__(self, *, memory: str = "128M", cpus: int = 1, accel: str = "auto",
                 machine: str = "auto", kernel_args: str = "", host_files: bool = False,
                 keep: tuple[str, ...] = (), kernel: Kernel | None = None,
                 image: str | Image | None = None, network: str | None = None) -> None:
        """Check the arguments and find QEMU, a kernel, an accelerator and the image
        (a name in the store, or an Image; default: the busybox tree); start nothing."""
        self.memory = check_vm_options(memory, cpus, accel, machine)
        machine = check_vm_network(network, machine)
        self.image = stored_image(image, host_files) if image is not None else None
        self.qemu = qemu.find_qemu()
        self.kernel = kernel or find_kernel(need_modules=host_files or network is not None)
        if network is not None and self.kernel.modules is None:
            raise VMError(f"a VM with a network card needs its kernel's virtio_net module, "
                          f"and {self.kernel.source} comes without modules: run `make setup`")
        usable, self.accel_reason = qemu.accelerator() if accel != "tcg" else ("tcg", "asked for")
        if accel == "kvm" and usable != "kvm":
            raise VMError(f"KVM is not usable here: {self.accel_reason} (use accel='tcg')")
        self.accel = usable
        if host_files and "q35" in cpu().machines:    # 9p needs PCI devices; microvm has none
            machine = "q35" if machine == "auto" else machine
        self.machine = machine
        self.cpus, self.kernel_args, self.host_files = cpus, kernel_args, host_files
        self.network = network
        self.attachment: networking.Attachment | None = None   # its lease and tap, once made
        self.keep = tuple(str(Path(p).resolve()) for p in keep)   # host dirs in /tmp or /run
        self.process: subprocess.Popen | None = None
        self.command: str | None = None
        self.console: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.id = os.urandom(6).hex()

    # -- life cycle ---------------------------------------------------------------------

    def boot(self, command: str = IDLE, timeout: float = 120) -> Boot:
        """Start QEMU and wait until the guest's init says it is ready; the guest
        then runs `command` (by default: nothing, until stop())."""
        self.start(command)
        return self.ready(timeout)

    def start(self, command: str = IDLE) -> VM:
        """Start QEMU and return at once (boot several VMs side by side, then ready());
        on failure, whatever was made of the VM is removed again."""
        if self.machine == "auto":
            self.machine = choose_machine(self.kernel, self.accel)
        # Written down before anything exists, so `minicontainer cleanup` can find
        # QEMU and its files if this process dies without stop().
        self._record = {"owner": os.getpid(), "owner_started": start_time(os.getpid()),
                        "tmp": str(self.scratch), "qemu": None, "network": None}
        state.write_vm(self.id, self._record)
        try:
            self.scratch.mkdir(mode=0o700)
            if self.network is not None:
                self._plug_network_card()
            self.write_initramfs(self.initrd, command)
            self.command = command
            self._started = time.monotonic()
            self._launch(self.qemu_argv(self.initrd))
        except BaseException:
            self.stop()
            raise
        return self

    def _plug_network_card(self) -> None:
        """Lease an address on the bridge and make the tap, the card's cable: recorded
        at once, so that cleanup finds both if this process dies."""
        self.attachment = networking.attach(self.network, networking.vm_holder(self.id),
                                            self.id, networking.vm_holder(self.id), None)
        self._record["network"] = asdict(self.attachment)
        state.write_vm(self.id, self._record)
        self.attachment.plug_tap()

    @property
    def address(self) -> str | None:
        """The guest's eth0 address on its bridge (None: no network card)."""
        return self.attachment and self.attachment.address

    def _launch(self, argv: list[str]) -> None:
        """Start QEMU with `argv`, write its pid into the record, read its console."""
        self.qmp_socket.unlink(missing_ok=True)     # a killed QEMU leaves its socket
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        state.write_vm(self.id, {**self._record, "qemu": [self.process.pid,
                                                          start_time(self.process.pid)]})
        self._lines = queue.Queue()                 # this QEMU's console, from its start
        threading.Thread(target=self._read_console, args=(self.process, self._lines),
                         daemon=True).start()

    def ready(self, timeout: float = 120) -> Boot:
        """Wait for the guest's "ready", and say where the time went."""
        at_init = float(self._wait_for(r"MC-INIT (\S+)", timeout, self._started)[1])
        at_ready = float(self._wait_for(r"MC-READY (\S+)", timeout, self._started)[1])
        total = time.monotonic() - self._started
        return Boot(total, total - at_ready, at_init, at_ready - at_init)

    def wait(self, timeout: float = 600) -> tuple[int, str]:
        """Wait for the guest's command to finish: its exit code and its output."""
        start = len(self.console)
        match = self._wait_for(r"^MC-EXIT=(\d+)$", timeout, time.monotonic())
        output = self.console[start:-1]
        self.process.wait(timeout=30)      # the guest powers off, and QEMU exits
        return int(match[1]), "".join(line + "\n" for line in output)

    def run(self, command: str, timeout: float = 600) -> tuple[int, str]:
        """Boot, run `command` in the guest, power off: (exit code, output)."""
        self.boot(command, timeout)
        return self.wait(timeout)

    def stop(self) -> None:
        """Switch the machine off (SIGTERM: QEMU exits at once) and tidy up: its
        scratch directory goes, with the initramfs and any saved snapshot."""
        self._end_qemu()
        if self.attachment is not None:       # the lease back, the tap deleted
            networking.detach(self.attachment)
            self.attachment = None
        shutil.rmtree(self.scratch, ignore_errors=True)
        state.release_vm(self.id)

    def _end_qemu(self) -> None:
        """End this VM's QEMU, if it runs, and close its pipes."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
            self.process.wait()
            self.process.stdin.close()
            self.process.stdout.close()

    # -- a guest that answers, saved and restored (snapshot.py) --------------------------

    def exec(self, command: str, timeout: float = 60) -> tuple[int, str]:
        """Run one line of shell in a guest booted with boot(ANSWER): it arrives over
        the serial console, like typing (docker exec's cousin): (exit code, output)."""
        if self.command != ANSWER or self.process is None or self.process.poll() is not None:
            raise VMError("exec needs a running VM booted with boot(ANSWER)")
        if "\n" in command or "\r" in command:
            raise InvalidArgument("exec takes one line of shell, without line breaks")
        self.poll_console()
        if "MC-LISTENING" not in self.console:    # the guest's loop has not started yet
            self._wait_for("^MC-LISTENING$", timeout, time.monotonic())
        start = len(self.console)
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()
        match = self._wait_for(r"^MC-ANSWERED=(\d+)$", timeout, time.monotonic())
        return int(match[1]), "".join(line + "\n" for line in self.console[start:-1])

    def save_snapshot(self, timeout: float = 120) -> float:
        """Pause the running guest, write its whole state (RAM, CPUs, devices) into
        this VM's scratch directory and end QEMU: the seconds it took."""
        if self.process is None or self.process.poll() is not None:
            raise VMError("only a running VM can be saved: boot() it first")
        started = time.monotonic()
        qmp = snapshot.QMP(self.qmp_socket, timeout, self.process)
        try:
            snapshot.save(qmp, self.snapshot_file, timeout)
            qmp.command("quit")
        finally:
            qmp.close()
        self.process.wait(timeout=30)
        return time.monotonic() - started

    def restore(self, timeout: float = 120) -> float:
        """Start a new QEMU from the saved state and let the guest run on where it
        stopped (a guest running now is thrown away): seconds from starting QEMU
        until the guest's CPUs run again."""
        if not self.snapshot_file.exists():
            raise VMError("nothing to restore: save_snapshot() first")
        self._end_qemu()
        started = time.monotonic()
        self._launch(self.qemu_argv(self.initrd) + snapshot.incoming_options(self.snapshot_file))
        qmp = snapshot.QMP(self.qmp_socket, timeout, self.process)
        try:
            snapshot.resume(qmp, timeout)
        finally:
            qmp.close()
        return time.monotonic() - started

    @property
    def scratch(self) -> Path:
        """This VM's temporary files (the initramfs, QMP's socket, a snapshot),
        removed by stop() or cleanup."""
        return Path(tempfile.gettempdir()) / f"mc-vm-{self.id}"

    @property
    def initrd(self) -> Path:
        """The archive this VM boots from, in its scratch directory."""
        return self.scratch / "initramfs.gz"

    @property
    def qmp_socket(self) -> Path:
        """Where QEMU listens for QMP commands (snapshot.py)."""
        return self.scratch / "qmp.sock"

    @property
    def snapshot_file(self) -> Path:
        """Where save_snapshot() writes the guest's state, and restore() reads it."""
        return self.scratch / "snapshot"

    def __enter__(self) -> VM:
        """The VM itself, stopped when the `with` block ends."""
        return self

    def __exit__(self, *exc) -> None:
        """Stop the VM, whether or not the block raised."""
        self.stop()

    # -- the pieces -----------------------------------------------------------------------

    def initramfs(self, command: str) -> bytes:
        """The archive this VM boots from: the busybox tree, and an /init that runs
        `command` (an image's: see write_initramfs)."""
        return guest_initramfs(command, self.kernel.modules, self.keep, self.host_files,
                               self.network is not None)

    def write_initramfs(self, initrd: Path, command: str) -> None:
        """Write the archive this VM boots from to `initrd`: for an image, its packed
        tree (cached: packed on the first boot only), then our init's own archive."""
        if self.image is None:
            initrd.write_bytes(self.initramfs(command))
            return
        packed = packed_image(self.image, self.scratch)
        if packed.memory_needed() > self.memory:
            needed = -(-packed.memory_needed() // 2**20)
            raise VMError(f"image {self.image.name} needs a VM of at least {needed}M: its "
                          f"{packed.packed.ram_bytes // 2**20} MiB of files live in the "
                          "guest's RAM (an initramfs's tmpfs, at most half of it): give "
                          f"memory=\"{needed}M\", or run the image in a container")
        shutil.copyfile(packed.archive, initrd)
        settings = settings_of(self.image.config)
        env = {"PATH": PATH, "HOME": "/root", **environment_of(settings.get("Env") or [])}
        workdir = check_workdir(settings.get("WorkingDir") or "/")
        with open(initrd, "ab") as out:
            out.write(image_init_archive(command, tuple(env.items()), workdir,
                                         self.kernel.modules if self.network else None))

    def qemu_argv(self, initrd: Path) -> list[str]:
        """QEMU's command line for this VM, booting from `initrd`."""
        machine, image_kind = qemu.machine_options(self.machine, self.accel)
        image = getattr(self.kernel, image_kind) or self.kernel.bzimage or self.kernel.vmlinux
        return [self.qemu, *machine,
                *qemu.hardware_options(self.accel, self.memory, self.cpus),
                *qemu.SERIAL_CONSOLE_ONLY,
                *qemu.direct_boot_options(image, initrd, self.kernel_arguments()),
                *(qemu.HOST_ROOT_SHARE if self.host_files else []),
                *(qemu.network_card_options(self.attachment.host_end, self.mac_address())
                  if self.attachment else []),
                "-qmp", f"unix:{self.qmp_socket},server=on,wait=off"]

    def kernel_arguments(self) -> str:
        """The guest kernel's extra command line: the caller's; eth0's address and
        gateway for our /init; for an image, where our init is (the image's own
        /init, if any, is not ours to run)."""
        words = [self.kernel_args]
        if self.attachment:
            words.append(f"mc.address={self.attachment.address}/{self.attachment.prefix} "
                         f"mc.gateway={self.attachment.gateway}")
        if self.image:
            words.append(f"rdinit={IMAGE_INIT}")
        return " ".join(word for word in words if word)

    def mac_address(self) -> str:
        """The card's MAC address, made of its IPv4 address as Docker makes a
        container's (02:42:ac:11:00:02 for 172.17.0.2), behind QEMU's prefix 52:54."""
        a, b, c, d = (int(part) for part in self.attachment.address.split("."))
        return f"52:54:{a:02x}:{b:02x}:{c:02x}:{d:02x}"

    @staticmethod
    def _read_console(process: subprocess.Popen, lines: queue.Queue) -> None:
        """Queue `process`'s output line by line (a thread); None when it has exited."""
        for raw in process.stdout:
            lines.put(raw.decode(errors="replace").rstrip("\r\n"))
        lines.put(None)

    def _wait_for(self, pattern: str, timeout: float, since: float) -> re.Match:
        """Read console lines until one matches; fail clearly on exit or time-out."""
        while True:
            left = timeout - (time.monotonic() - since)
            try:
                line = self._lines.get(timeout=max(left, 0))
            except queue.Empty:
                self.process.kill()
                raise Timeout(f"the VM did not answer within {timeout} s; its console ended "
                              f"with:\n{self.tail()}") from None
            if line is None:
                self._lines.put(None)
                raise VMError(f"QEMU exited (status {self.process.wait()}) before the guest "
                              f"answered; its console ended with:\n{self.tail()}")
            self.console.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def poll_console(self) -> None:
        """Move what the guest printed so far into .console, without waiting."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self._lines.put(None)
                raise VMError(f"QEMU exited unexpectedly; its console ended with:\n{self.tail()}")
            self.console.append(line)

    def tail(self, lines: int = 15) -> str:
        """The last `lines` lines the guest printed, for error messages."""
        return "\n".join(self.console[-lines:])


def check_vm_network(network: str | None, machine: str) -> str:
    """The machine type for a VM on `network` (q35 where there is one, for its PCI
    bus); InvalidArgument for a network that is not one of ours, or microvm.

    Debian's kernel drives virtio on microvm only where ACPI or the command line
    (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, off in Debian) says where the card is, and
    our microvm runs without ACPI, which boots faster: so a card goes on a PCI bus."""
    if network is None:
        return machine
    if not (isinstance(network, str) and NETWORK_NAME.fullmatch(network)):
        raise InvalidArgument(f"invalid network {network!r}: a network of ours, e.g. "
                              f"{networking.DEFAULT_NETWORK} (see `minicontainer network ls`)")
    if machine == "microvm":
        raise InvalidArgument("a VM on microvm cannot have a network card here: its kernel "
                              "finds no virtio-mmio card without ACPI; use machine='q35'")
    return "q35" if machine == "auto" and "q35" in cpu().machines else machine


def stored_image(image: str | Image, host_files: bool) -> Image:
    """The image to boot, found in the store (its layers unpacked); InvalidArgument with
    host_files, which boots the host's files instead."""
    from ..images.store import Image, Store     # only when asked: importing VM stays quick
    if host_files:
        raise InvalidArgument("give an image or host_files=True, not both")
    return image if isinstance(image, Image) else Store().image(image)


def choose_machine(kernel: Kernel, accel: str) -> str:
    """The fastest machine type that boots here, measured once and remembered: the
    median of three boots for each vmlinux machine; the bzImage ones only if no
    vmlinux machine boots at all."""
    record = kernel_dir() / "machine.json"
    key = f"{kernel.release} {accel} {qemu.qemu_version()}"
    known = json.loads(record.read_text()) if record.exists() else {}
    if key in known:
        return known[key]
    timings = {}
    for name, (_, image) in cpu().machines.items():
        if timings and image == "bzimage":
            break
        try:
            boots = []
            for _ in range(3):
                with VM(memory="128M", accel=accel, machine=name, kernel=kernel) as vm:
                    boots.append(vm.boot(timeout=60).total)
            timings[name] = sorted(boots)[1]
        except (VMError, Timeout):
            continue
    if not timings:
        raise VMError("no machine type could boot the kernel: see `minicontainer doctor`")
    known[key] = min(timings, key=timings.get)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(known))
    return known[key]


def run_on_host_files(command: str, *, kernel_args: str = "", memory: str = "512M",
                      cpus: int = 2, timeout: float = 600,
                      keep: tuple[str, ...] = ()) -> tuple[int, str]:
    """Boot a VM with its own kernel (and `kernel_args`, e.g. cgroup_no_v1=all for a
    pure cgroup v2 machine) that runs `command` in the host's files, read-only: a way
    to run the host's tests on another kernel. Returns (exit code, output)."""
    with VM(memory=memory, cpus=cpus, kernel_args=kernel_args, host_files=True,
            keep=keep) as vm:
        return vm.run(command, timeout)
