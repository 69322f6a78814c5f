"""How every layer runs: in a child process, never in the caller.

fork(2) copies the calling process. The copy runs a layer's steps on itself (chroot,
unshare, mount, ...) and then execve(2) replaces its program with the container's
command. The caller - in class, a Jupyter kernel - keeps its own root, mounts and
namespaces, whatever the child does.

Between fork and exec the child runs only system calls: the caller may have threads,
fork copies just the one that called it, and a lock another thread held stays locked
forever in the copy. So steps import nothing, log nothing and start no threads.
Nor may the caller's own Python run there: a signal handler of the caller's (Python's
Ctrl-C handler raises KeyboardInterrupt) would run in the copy, as the caller. So the
fork happens with the signals that have a Python handler blocked, and the child resets
those handlers before it lets them in again (fork_without_handlers).

A step that fails cannot raise into the parent, which is another process. The child
writes the error to a pipe and exits; the pipe is close-on-exec, so when exec succeeds
the parent just reads end-of-file. (subprocess works the same way.) The same pipe
carries two more messages: the pid of the command, when a pid namespace made us fork
once more (see fork_and_wait), and "ready", when a step waits for the parent to do
its part on the host (plug in the network cable) before the command may run. The
pipes are a Channel, made before the fork and handed to the steps that use them.

Only fds 0, 1 and 2 reach the command. Whatever else the caller has open - a
shell's `exec 7</`, a Jupyter kernel's sockets - would otherwise be inherited, and a
directory fd to the host's / is the whole host filesystem through /proc/self/fd/7
(CVE-2016-9962 and CVE-2024-21626 are this class in runc). So the last step before
exec marks every other fd close-on-exec, as runc does; `preserve_fds` passes on
3, 4, ... on purpose, as `podman run --preserve-fds` does.
"""
from __future__ import annotations

import errno
import os
import resource
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import CommandNotExecutable, CommandNotFound, Ended, StepFailed, Timeout
from .syscalls import close_on_exec_from, set_dumpable, set_parent_death_signal

Step = Callable[[], None]
# How a helper process of ours (a terminal's keeper) runs our code as
# root: -P, so that `-m` does not put the caller's working directory first on sys.path
# (a `selectors.py` in /tmp would run as root), and in / (steps chdir there).
HELPER_PYTHON = (sys.executable, "-P", "-m")

EXIT_SETUP_FAILED, EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND = 125, 126, 127


class Channel:
    """The two pipes between spawn() and the child it forks: made by spawn before the
    fork, handed explicitly to the steps that talk to the parent (they hold the
    Channel from before spawn; they use it in the child).

    Data format, child to parent (the report pipe), one line per message:

        pid N                        the command runs as process N (a step forked once
                                     more to enter a pid namespace: fork_and_wait)
        ready                        a step waits for the parent's part on the host
        error STAGE ERRNO TYPE TEXT  a step (STAGE "setup") or exec ("exec") failed:
                                     its errno (0 if none), the exception's type, its text

    End-of-file means exec succeeded (the pipe is close-on-exec) or the child is gone.
    Parent to child (the go pipe): b"go" answers `ready`; end-of-file means give up.
    """

    report_write = go_read = -1     # until spawn opens it: a step told of a Channel that
                                    # spawn was not given fails on a closed fd (EBADF)

    def open(self) -> None:
        """Make the pipes (spawn does, just before the fork: nothing is open before)."""
        self.report_read, self.report_write = os.pipe()   # close-on-exec (PEP 446)
        self.go_read, self.go_write = os.pipe()

    def tell(self, message: bytes) -> None:
        """In the child: one message to the parent."""
        os.write(self.report_write, message + b"\n")

    def stop_telling(self) -> None:
        """In the child: close our end, so the parent is not kept waiting on it (a
        process that goes on without exec: init, a Python function as the program)."""
        os.close(self.report_write)

    def wait_for_go(self) -> bool:
        """In the child: block until the parent says go (True) or gives up (False)."""
        return os.read(self.go_read, 2) == b"go"

    def close(self) -> None:
        """Close all four ends (no child was forked)."""
        close_all([self.report_read, self.report_write, self.go_read, self.go_write])

    def keep_child_ends(self) -> None:
        """In the child, after fork: drop the parent's ends (holding the go pipe's write
        end, the child would wait for itself forever)."""
        os.close(self.report_read)
        os.close(self.go_write)

    def keep_parent_ends(self) -> None:
        """In the parent, after fork: drop the child's ends, so end-of-file can come."""
        os.close(self.report_write)
        os.close(self.go_read)


@dataclass
class Result:
    """How a command ended. exit_code is what a shell reports: 128+N if killed by signal N."""

    exit_code: int
    stdout: str
    stderr: str
    duration: float              # seconds, from start() to exit
    signal: str | None = None    # "SIGKILL" etc. when the process was killed by a signal
    startup: float | None = None  # seconds, from start() until the command was running
    oom_killed: bool = False     # killed by the kernel for going over its memory limit


def result_of(status: int | None, out: str, err: str, duration: float) -> Result:
    """The Result of a wait status (None: not ours to wait for, and nobody wrote it)."""
    if status is None:
        return Result(-1, out, err, duration)
    return Result(exit_code(status), out, err, duration, killed_by(status))


@dataclass
class Child:
    """A forked child: `pid` is ours to wait for; `main_pid` runs the command."""

    pid: int
    main_pid: int
    pidfd: int  # refers to main_pid for good, even after its number is reused
    exited: bool = False

    def send_signal(self, sig: int) -> None:
        """Signal the command's process (safe even if it has already exited)."""
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the child to exit and return its wait status.

        Returns None for a process started by another program (the CLI's `stop` of a
        detached container): only its parent can collect the status.
        """
        if self.exited:
            return None
        if not wait_for_exit(self.pid, timeout):
            raise Timeout(f"process {self.pid} still running after {timeout} s")
        self.exited = True      # from here on its pid may be reused: never look at it again
        try:
            return os.waitpid(self.pid, 0)[1]
        except ChildProcessError:
            return None

    def close(self) -> None:
        """Let go of the pidfd (after wait())."""
        os.close(self.pidfd)


def wait_for_exit(pid: int, timeout: float | None) -> bool:
    """Block until process `pid` exits or `timeout` seconds pass; True if it exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    with os.fdopen(pidfd) as f:  # a pidfd becomes readable when its process exits
        readable, _, _ = select.select([f], [], [], timeout)
    return bool(readable)


def spawn(argv: Sequence[str], steps: Sequence[Step] = (), *, env: dict[str, str] | None = None,
          stdio: Sequence[int | None] = (None, None, None),
          main: Callable[[], None] | None = None,
          when_ready: Callable[[int], None] | None = None, preserve_fds: int = 0,
          pass_fds: Sequence[int] = (), channel: Channel | None = None,
          adopt: Callable[[Child], None] | None = None) -> Child:
    """Fork, run `steps` in the child, then exec `argv` (or call `main`, for demos).

    `stdio` gives the files for the child's fds 0, 1, 2 (None: keep the caller's);
    no other fd of the caller's reaches the command, but for `preserve_fds` from 3 on
    and the fds in `pass_fds` (as subprocess's pass_fds).
    `channel` is the one the steps were given, if any talk to us (wait_for_parent,
    fork_and_wait...); if a step says it is ready, `when_ready(pid of the command)`
    runs here meanwhile. Returns once the command runs; raises here what failed in
    the child. `adopt(child)` runs first, Ctrl-C held: where the caller keeps it, so
    that a Ctrl-C as spawn returns cannot leave a running command nobody holds (without
    `adopt`, a Ctrl-C there ends the command).
    """
    channel = channel or Channel()
    channel.open()
    try:
        pid = fork_without_handlers()
    except OSError:                   # EAGAIN: a full pids cgroup, or no memory
        channel.close()
        raise
    if pid == 0:
        try:
            channel.keep_child_ends()
            _child(argv, steps, env, stdio, channel, main, 3 + preserve_fds, pass_fds)
        finally:
            os._exit(EXIT_SETUP_FAILED)  # never fall back into the caller's code
    go_write = channel.go_write
    main_pid, child = pid, None
    try:
        channel.keep_parent_ends()
        with os.fdopen(channel.report_read, "rb") as pipe:
            for line in pipe:                 # end-of-file: the command is running
                kind, _, rest = line.rstrip(b"\n").partition(b" ")
                if kind == b"pid":
                    main_pid = int(rest)
                elif kind == b"ready":
                    when_ready(main_pid)      # if this raises, the child gets no go-ahead
                    os.write(go_write, b"go")
                elif kind == b"error":
                    raise _error_from(rest)
        with interrupts_held():   # a Ctrl-C here: raised once the caller holds it, or it is killed
            os.close(go_write)
            go_write = None
            child = Child(pid, main_pid, open_pidfd(main_pid, parent=pid))
            if adopt:
                adopt(child)
    except BaseException:
        if child is None or adopt is None:
            # Nobody holds the command, so it ends here (it may not have started, and
            # then never will: a child waiting for "go" sees end-of-file and exits; one
            # still in its steps is killed, and with it the command its waiter forked).
            # Held: a second Ctrl-C must not leave the child unreaped.
            with interrupts_held():
                if go_write is not None:
                    os.close(go_write)
                if child is not None:
                    child.send_signal(signal.SIGKILL)
                    child.close()
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        raise
    return child


def fork_without_handlers() -> int:
    """os.fork(), but the child runs none of the caller's Python signal handlers: each
    is reset to SIG_DFL before its signal can reach the child.

    Otherwise a Ctrl-C that lands just after the fork runs the caller's handler in the
    copy: KeyboardInterrupt in threading's after-fork clean-up, or before spawn's
    `if pid == 0`, and the copy carries on as the caller. Seen in CI: a notebook's
    stop button (SIGINT to the kernel's process group) made a kernel's copy write
    its traceback to the notebook, wait forever on a lock the kernel's IO thread held
    at the fork, and the real kernel hung waiting for that child. subprocess never
    meets this: its child runs C (_posixsubprocess) until exec. A blocked signal stays
    pending in the child, so a Ctrl-C meant for it still arrives, with SIG_DFL.
    """
    # Only those with a Python handler (usually SIGINT alone): SIG_DFL and SIG_IGN run
    # no Python, and blocking all 62 costs 0.4 ms a fork here.
    handled = [sig for sig in _EVERY_SIGNAL if callable(signal.getsignal(sig))]
    before = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    try:
        pid = os.fork()               # may fail (EAGAIN: a full pids cgroup)
        if pid == 0:
            for sig in handled:
                signal.signal(sig, signal.SIG_DFL)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    return pid


_EVERY_SIGNAL = frozenset(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})


def run_to_the_end(argv: Sequence[str], **options) -> subprocess.CompletedProcess:
    """subprocess.run(argv, **options) with SIGINT blocked, in the tool too (the mask
    is inherited across exec): for host tools that must not die half-way (iptables,
    losetup). A notebook's stop button sends SIGINT to the kernel's whole process
    group, and a tool killed half-way has done half its work, or printed half its
    answer (a listing cut short reads as "no rules"). A process group of its own would
    not do: CPython's child joins it only after it lets signals in. The interrupt
    reaches us instead, once the tool is done."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return subprocess.run(argv, **options)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def capture(argv: Sequence[str], steps: Sequence[Step] = (), timeout: float = 30,
            **options) -> tuple[int, str]:
    """spawn() to the end: the exit code (as a shell says it) and what went to stdout."""
    out = os.memfd_create("stdout")           # an anonymous file, gone when closed
    try:
        child = spawn(argv, steps, stdio=(None, out, None), **options)
        code = exit_code(child.wait(timeout))
        child.close()
        return code, read_all(out)
    finally:
        os.close(out)


def read_all(fd: int) -> str:
    """All the text of a file we wrote to (a memfd), from its start."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def close_all(fds: Iterable[int | None]) -> None:
    """Close each fd given (None: nothing to close)."""
    for fd in fds:
        if fd is not None:
            os.close(fd)


def wait_for_parent(channel: Channel) -> None:
    """A step: tell the parent we are ready, then wait until it has done its part."""
    channel.tell(b"ready")
    if not channel.wait_for_go():              # end-of-file: the parent gave up
        os._exit(EXIT_SETUP_FAILED)


def open_pidfd(pid: int, parent: int) -> int:
    """A pidfd for `pid`, checked to be the process we started (a child of `parent`)."""
    try:
        pidfd = os.pidfd_open(pid)
        if pid != parent and _parent_of(pid) not in (parent, None):  # exited, pid reused
            os.close(pidfd)
            raise ProcessLookupError
    except ProcessLookupError:
        pidfd = os.pidfd_open(parent)   # the command has exited already: signals go nowhere
    return pidfd


def _parent_of(pid: int) -> int | None:
    """The parent's pid; None once the process is gone (its pidfd then names the dead)."""
    try:
        return int(_stat_fields(pid)[1])
    except FileNotFoundError:
        return None


def start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot); None if there is no such
    process, or only its zombie. A pid and its start time name one process for good."""
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] == b"Z" else int(fields[19])


def _stat_fields(pid: int) -> list[bytes]:
    """Fields of /proc/PID/stat after the command name (which may contain spaces)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()


def _child(argv, steps, env, stdio, channel, main, first_closed, pass_fds) -> None:
    """In the child: redirect stdio, run the steps, exec. Reports failure, never returns."""
    try:
        for fd, target in enumerate(stdio):
            if target is not None:
                os.dup2(target, fd)
        for step in steps:
            step()
        restore_signals()
        close_on_exec_from(first_closed)     # the report pipe is close-on-exec already
        for fd in pass_fds:
            os.set_inheritable(fd, True)
    except BaseException as e:
        _report(channel, b"setup", e)
        os._exit(EXIT_SETUP_FAILED)
    if main is not None:
        _call_as_program(main, first_closed, channel)
    try:
        os.execvpe(argv[0], list(argv), env if env is not None else os.environ)
    except BaseException as e:
        _report(channel, b"exec",
                OSError(getattr(e, "errno", 0), f"{argv[0]}: {getattr(e, 'strerror', e)}"))
        os._exit(EXIT_NOT_FOUND if isinstance(e, FileNotFoundError) else EXIT_CANNOT_EXECUTE)


def _call_as_program(main: Callable[[], None], first_closed: int, channel: Channel) -> None:
    """Run `main` as if it were the exec'd program: an exception ends it with exit code
    1 and one line on stderr, "TYPE: TEXT" (raised_in() reads it back), as Python's
    own last line of a traceback. No exec closes the caller's fds here, so they are
    pointed at an empty file now."""
    channel.stop_telling()
    blank_fds_from(first_closed)
    # print() must reach fds 1 and 2, as an exec'd program's output would: a Jupyter
    # kernel's sys.stdout is a socket to the notebook, served by a thread this copy
    # does not have (its print would land in the notebook, or wait for that thread).
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    try:
        main()
    except SystemExit as e:
        _flush_and_exit(e.code if isinstance(e.code, int) else 1)
    except BaseException as e:
        sys.stdout.flush()
        os.write(2, f"{type(e).__name__}: {e}\n".encode())
        os._exit(1)
    _flush_and_exit(0)


def _flush_and_exit(code: int) -> None:
    """What the function printed last, out; then exit with no interpreter clean-up
    (it would run the caller's atexit handlers, in a copy of the caller)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):    # closed by the function, or its reader gone
            pass
    os._exit(code)


def raised_in(stderr: str) -> tuple[str, str] | None:
    """(type, text) of the exception that ended a Python function run as a container's
    program, from its stderr; None if it did not end by one."""
    last = stderr.rstrip("\n").rpartition("\n")[2]
    kind, colon, text = last.partition(": ")
    return (kind, text) if colon and kind.isidentifier() else None


PASSED_ON = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def handling(signals: Sequence[int], handler: Callable[[int, object], None]) -> Iterator[None]:
    """`handler` for these signals inside the block, the old handlers after it. Only
    the main thread may set signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """A Ctrl-C (SIGINT) that lands inside the block is delivered again as it ends, to
    the handler there was before (in the main thread; elsewhere nothing changes).

    For what must not stop half-way: importing a package (interrupted half-imported,
    it stays broken in sys.modules: its submodules in, their names not bound in it,
    and a later import fails with NameError until the Jupyter kernel restarts); and
    making a host object together with storing its handle where removal finds it
    (Python raises KeyboardInterrupt at any call: between the two, the object would
    have no owner that knows it)."""
    held = []
    try:
        with handling([signal.SIGINT], lambda sig, frame: held.append(sig)):
            yield
    finally:        # also when the block failed: the button was pressed all the same
        if held:
            signal.raise_signal(signal.SIGINT)   # to the old handler: it raises, as it would


def signals_passed_to(child: Child):
    """While the caller waits in the foreground, SIGTERM, SIGHUP and Ctrl-C go to the
    command instead (docker run's --sig-proxy): a `trap` there sees them, and the caller
    keeps waiting for its exit code. A second Ctrl-C raises KeyboardInterrupt here, for
    a command that ignores the first (PID 1 without a handler does). A context manager."""
    interrupts = 0

    def pass_on(sig: int, frame) -> None:
        """The handler: pass `sig` on (a second SIGINT raises here instead)."""
        nonlocal interrupts
        if sig == signal.SIGINT:
            interrupts += 1
            if interrupts > 1:
                raise KeyboardInterrupt
        child.send_signal(sig)
    return handling(PASSED_ON, pass_on)


def ending_on(signals: Sequence[int]):
    """Turn these signals into Ended inside the block (a context manager), so that
    `finally` clauses run (a terminal in raw mode is restored) where the default
    action would just end the process."""
    def end(sig: int, frame) -> None:
        """The handler: end the block."""
        raise Ended(sig)
    return handling(signals, end)


def blank_fds_from(first: int) -> None:
    """Point every fd from `first` up at an empty anonymous file, so none reaches the
    host. Not close them: no exec replaces the Python objects that own them, and a
    number closed under its object is reused by the next open(), which the old
    object's finalizer would then close."""
    blank = os.memfd_create("blank")       # /dev/null may not exist in this root
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:                         # no /proc in here: every possible number
        fds = list(range(first, resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
    for fd in fds:
        if fd >= first and fd != blank:
            try:
                os.dup2(blank, fd)
            except OSError:
                pass
    os.close(blank)


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N if killed by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def killed_by(status: int) -> str | None:
    """The name of the signal that killed the process ("SIGKILL"), if one did."""
    return signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else None


def restore_signals() -> None:
    """Undo what Python did to signals: ignored signals stay ignored across exec."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


@dataclass(frozen=True)
class Waiter:
    """What the process left waiting outside a pid namespace is given (see monitor.py):
    a regular file to write its child's wait status to, and the small C program to
    become, both as fds opened before any namespace changed (None: no status to
    write; no program, so it stays the Python process it was forked as); and sockets
    to hold, untouched, until the command ends (published ports' reservations)."""

    exit_status: int | None = None
    program: int | None = None
    held: tuple[int, ...] = ()


PLAIN_WAITER = Waiter()   # writes no status, stays Python (an `exec`'s: its caller waits)


def fork_and_wait(channel: Channel, waiter: Waiter = PLAIN_WAITER) -> None:
    """Fork; the child returns and carries on, this process waits for it and exits alike.

    Needed after unshare(CLONE_NEWPID) or setns() into a pid namespace: both apply to
    the caller's future children, never to the caller itself. The waiting process
    tells the parent its child's pid, keeps nothing else open but `waiter`'s fds,
    writes the child's wait status to `waiter.exit_status`, and finally exits the way
    its child did (same exit code, or killed by the same signal). With
    `waiter.program` it does so as that program (monitor.c), not as Python.
    """
    told_read, told_write = os.pipe()
    pid = fork_without_handlers()
    if pid == 0:
        # Should the waiter be killed, nobody could report our exit: die with it.
        set_parent_death_signal(signal.SIGKILL)
        close_all([told_write, waiter.exit_status, waiter.program, *waiter.held])  # not ours
        # Our pid must reach the parent before any `ready` of ours: the parent plugs
        # eth0 into the namespaces of the last pid it heard of, and the waiter's are
        # the host's (seen in CI: 1 run of 50 at once got "eth0: File exists").
        os.read(told_read, 1)                 # end-of-file: the waiter has told it
        os.close(told_read)
        return
    os.close(told_read)
    channel.tell(b"pid %d" % pid)
    os.close(told_write)
    kept = [fd for fd in (waiter.exit_status, waiter.program, *waiter.held) if fd is not None]
    close_fds_but(kept)
    set_dumpable(False)       # its fds are no one else's (monitor.c does the same)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)   # only the command decides when it ends
    if waiter.program is not None:
        _become_monitor(waiter, pid)
    _, status = os.waitpid(pid, 0)
    if waiter.exit_status is not None:
        os.write(waiter.exit_status, b"%d" % status)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))   # the command dumped core already
        if sig != signal.SIGKILL:                            # SIGKILL cannot be caught anyway
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status))


def close_fds_but(kept: Sequence[int]) -> None:
    """Close every fd from 3 up but those in `kept`."""
    first = 3
    for fd in sorted(kept):
        os.closerange(first, fd)
        first = fd + 1
    os.closerange(first, 1 << 20)


def _become_monitor(waiter: Waiter, child: int) -> None:
    """exec the monitor program (by its fd: no path of the caller's need resolve
    here) to wait for `child`; returns only if the exec failed, to wait as Python."""
    status_fd = -1 if waiter.exit_status is None else waiter.exit_status
    for fd in (waiter.exit_status, *waiter.held):
        if fd is not None:
            os.set_inheritable(fd, True)     # the monitor holds the held ones, silently
    try:
        os.execve(waiter.program, ["mc-monitor", str(child), str(status_fd)], {})
    except OSError:
        pass


def _report(channel: Channel, stage: bytes, error: BaseException) -> None:
    """In the child: an `error` message (see Channel) for what failed."""
    code, text = 0, str(error)
    if isinstance(error, OSError) and error.strerror:
        code, text = error.errno or 0, error.strerror
        if error.filename is not None:
            text = f"{os.fsdecode(error.filename)}: {text}"
    message = text.replace("\n", " ").encode(errors="replace")[:3000]
    channel.tell(b"error %s %d %s %s" % (stage, code, type(error).__name__.encode(), message))


def _error_from(report: bytes) -> Exception:
    """Here: the exception to raise for an `error` message."""
    stage, code, kind, message = (report.split(b" ", 3) + [b""])[:4]
    text, number, kind = message.decode(errors="replace"), int(code), kind.decode()
    if stage == b"exec" and number in (errno.ENOENT, errno.ENOTDIR):
        return CommandNotFound(f"command not found in the container: {text}")
    if stage == b"exec":
        return CommandNotExecutable(f"cannot run the command in the container: {text}")
    if number:
        return OSError(number, f"container setup failed: {text}")
    return StepFailed(kind, text)
