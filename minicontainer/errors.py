"""The exceptions minicontainer raises. The CLI prints their message as one line."""
from __future__ import annotations


class MinicontainerError(Exception):
    """Something the user can fix; the message says how."""

    exit_code = 125  # Docker's code for "the runtime itself failed"


class NotRootError(MinicontainerError):
    """Namespaces, mounts and cgroups need root (CAP_SYS_ADMIN)."""


class NotLinuxError(MinicontainerError):
    """Containers are a Linux kernel feature."""


class CommandNotFound(MinicontainerError):
    """The command does not exist inside the container (exit status 127, like a shell)."""

    exit_code = 127


class CommandNotExecutable(MinicontainerError):
    """The command exists but cannot be run (exit status 126, like a shell)."""

    exit_code = 126


class ContainerNotFound(MinicontainerError):
    """No container by that name."""


class BadRecord(MinicontainerError):
    """A record on disk the host will not act on: it names what is not the container's."""


class NameInUse(MinicontainerError):
    """A container by that name exists already."""


class BadBundle(MinicontainerError):
    """An OCI bundle we cannot run as written: the message names the config.json field."""


class WrongState(MinicontainerError):
    """An OCI runtime operation asked of a container in a state that does not allow it."""


class VMError(MinicontainerError):
    """QEMU, the kernel or the guest failed; the message says where."""


class InvalidArgument(MinicontainerError, ValueError):
    """A value that makes no sense (an empty command, a bad hostname, ...)."""


class Timeout(MinicontainerError, TimeoutError):
    """A container or a command did not finish in time."""


class StepFailed(MinicontainerError):
    """A step of a container's setup raised in the child: `kind` is the exception's
    type there (e.g. "NotImplementedError"), `detail` its text."""

    def __init__(self, kind: str, detail: str) -> None:
        """The failure of a step whose exception was of type `kind`."""
        super().__init__(f"container setup failed: {kind}: {detail}")
        self.kind, self.detail = kind, detail


class MissingControllers(MinicontainerError):
    """The kernel lacks a cgroup controller the budget needs (memory, cpu, pids)."""


class RootfsError(MinicontainerError):
    """The root filesystem is missing, incomplete or cannot be built."""


class UnsupportedCPU(MinicontainerError):
    """This machine's CPU is not one the course supports (x86_64, aarch64)."""


class ImageError(MinicontainerError):
    """An image, or a layer or blob of one, is missing or refused; the message says which."""


class ImageNotFound(ImageError):
    """No image by that name in the store (what `run --pull missing` pulls for)."""


class DigestMismatch(ImageError):
    """Bytes that are not what their digest (or size) promised: nothing was kept."""


class ToolFailed(MinicontainerError):
    """A program of the host's we drive (iptables, nft) refused what we asked."""


class RegistryError(MinicontainerError):
    """A registry refused, lacked or garbled what we asked for; the message says which."""


class Ended(Exception):
    """A signal ended a wait in the foreground (raised by process.ending_on)."""

    def __init__(self, sig: int) -> None:
        """The wait ended by signal `sig`."""
        import signal
        super().__init__(signal.Signals(sig).name)
        self.signal = sig
