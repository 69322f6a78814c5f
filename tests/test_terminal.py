"""The terminal (`-t`, `-i`, detach keys, attach), driven as a person drives it: the CLI
runs on a real pseudo-terminal (Python's pty, standing in for xterm) or in tmux, and
the test types keys and reads the screen."""
from __future__ import annotations

import fcntl
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from minicontainer import state
from minicontainer.container import Container
from minicontainer.errors import InvalidArgument
from minicontainer.terminal import DetachKeys, parse_detach_keys

CLI = [sys.executable, "-m", "minicontainer"]


class Screen:
    """A program run on a pty of its own, as in a terminal window: type(), expect()."""

    def __init__(self, *args: str, rows: int = 30, columns: int = 100) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execv(CLI[0], CLI + list(args))
        self.resize(rows, columns)
        self.settings = termios.tcgetattr(self.fd)     # as the window had them
        self.seen = b""

    def resize(self, rows: int, columns: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def type(self, keys: str | bytes) -> None:
        os.write(self.fd, keys.encode() if isinstance(keys, str) else keys)

    def wait_until_raw(self) -> None:
        """Until the program has put the window in raw mode (a person sees a prompt)."""
        deadline = time.monotonic() + 10
        while termios.tcgetattr(self.fd)[3] & termios.ECHO:
            assert time.monotonic() < deadline, "the terminal never went raw"
            time.sleep(0.02)

    def expect(self, text: str, timeout: float = 15) -> str:
        """Read until `text` shows; return what came up to it (and forget it)."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never showed; the screen: {self.seen[-600:]!r}"
            if select.select([self.fd], [], [], min(left, 0.2))[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:                    # EIO: the program is gone
                    chunk = b""
                if not chunk:
                    assert text.encode() in self.seen, f"{text!r} never showed: {self.seen!r}"
                self.seen += chunk
        before, _, self.seen = self.seen.partition(text.encode())
        return before.decode(errors="replace")

    def exit_code(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            assert time.monotonic() < deadline, "the program did not end"
            try:                                   # keep the pty drained meanwhile
                if select.select([self.fd], [], [], 0.1)[0]:
                    self.seen += os.read(self.fd, 4096)
            except OSError:
                time.sleep(0.05)

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


@pytest.fixture
def screens():
    opened: list[Screen] = []

    def screen(*args: str, **size) -> Screen:
        opened.append(Screen(*args, **size))
        return opened[-1]
    yield screen
    for s in opened:
        s.close()                   # a CLI killed: its container is a dead owner's
    for name in state.names():
        if name.startswith("mc-tty-"):
            subprocess.run(CLI + ["rm", "-f", name], capture_output=True)
    subprocess.run(CLI + ["cleanup"], capture_output=True)


def mc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=60)


PROMPT = "# "


def shell(screens, *options: str) -> Screen:
    s = screens("run", "-it", *options, "--", "/bin/sh")
    s.wait_until_raw()
    s.expect(PROMPT)
    return s


def test_run_it_gives_a_shell_its_own_terminal(screens):
    s = shell(screens)
    s.type("tty; echo pts: $(ls /dev/pts); stty size\r")
    out = s.expect(PROMPT)
    assert "/dev/pts/0" in out                  # the container's devpts: its own pty 0
    assert "pts: 0 ptmx" in out                  # and no pty of the host's
    assert "30 100" in out                      # the window's size, from the start
    s.type("exit 3\r")
    assert s.exit_code() == 3
    assert termios.tcgetattr(s.fd) == s.settings
    assert state.names() == []


def test_ctrl_c_interrupts_the_foreground_command_and_the_shell_answers(screens):
    s = shell(screens)
    s.type("sleep 100\r")
    time.sleep(0.5)
    s.type(b"\x03")
    s.type("echo status $?\r")
    s.expect("status 130")                      # the sleep got SIGINT; the shell lives
    s.type(b"\x1c")                             # Ctrl-\: SIGQUIT, ignored by a shell
    s.type("sleep 100\r")
    time.sleep(0.5)
    s.type(b"\x1a")                             # Ctrl-Z: job control in a session of its own
    s.expect("Stopped")
    s.type("jobs\r")
    s.expect("sleep 100")
    s.type("fg\r")
    time.sleep(0.3)
    s.type(b"\x03")
    s.type("echo back $?\r")
    s.expect("back 130")
    s.type("sleep 60 & jobs\r")
    s.expect("Running")
    s.type("exit\r")
    assert s.exit_code() == 0


def test_the_window_size_follows_a_resize(screens):
    s = shell(screens)
    s.resize(41, 123)
    os.kill(s.pid, signal.SIGWINCH)            # what a terminal emulator's resize sends
    time.sleep(0.3)
    s.type("stty size\r")
    s.expect("41 123")
    s.type("exit\r")
    assert s.exit_code() == 0


def test_vi_opens_and_quits(screens):
    s = shell(screens)
    s.type("vi /tmp/note\r")
    s.expect("/tmp/note")                      # vi's status line
    s.type("ihello from vi")
    s.expect("hello from vi")
    s.type(b"\x1b")                             # alone: ESC plus a key is a key of its own
    time.sleep(0.3)
    s.type(":wq\r")
    s.expect(PROMPT)
    s.type("cat /tmp/note\r")
    s.expect("hello from vi")
    s.type("exit\r")
    assert s.exit_code() == 0
    assert termios.tcgetattr(s.fd) == s.settings


def test_detach_keys_leave_it_running_and_attach_returns(screens):
    s = shell(screens, "--name", "mc-tty-detach")
    s.type("echo one > /tmp/mark\r")
    s.expect(PROMPT)
    s.type(b"\x10\x11")
    s.expect("detached from mc-tty-detach")
    assert s.exit_code() == 0
    assert termios.tcgetattr(s.fd) == s.settings
    assert "running" in mc("ps").stdout
    again = screens("attach", "mc-tty-detach")
    again.wait_until_raw()
    again.type("cat /tmp/mark\r")
    again.expect("one")
    again.type(b"\x10\x11")                    # and once more
    again.expect("detached")
    assert again.exit_code() == 0
    last = screens("attach", "mc-tty-detach")
    last.wait_until_raw()
    last.type("exit 5\r")
    assert last.exit_code() == 5                # attach returns the container's code
    assert "exited (5)" in mc("ps", "-a").stdout
    assert "cat /tmp/mark" in mc("logs", "mc-tty-detach").stdout   # a tty's log, as Docker's
    assert mc("rm", "mc-tty-detach").returncode == 0


def test_run_dit_then_attach_gives_the_shell_back(screens):
    started = mc("run", "-dit", "--name", "mc-tty-dit", "--", "/bin/sh")
    assert (started.returncode, started.stdout) == (0, "mc-tty-dit\n")
    s = screens("attach", "--detach-keys", "ctrl-a,d", "mc-tty-dit")
    s.wait_until_raw()
    s.type("hostname\r")
    s.expect("mc-tty-dit")
    second = mc("attach", "mc-tty-dit")       # one terminal at a time
    assert second.returncode == 125 and "attached to another terminal" in second.stderr
    s.type(b"\x10\x11")                         # not the keys any more: passed on
    s.type(b"\x01d")
    s.expect("detached")
    assert s.exit_code() == 0
    assert mc("rm", "-f", "mc-tty-dit").returncode == 0
    assert keepers() == []


def keepers() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and
            b"minicontainer.console" in _cmdline(p)]


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_the_terminal_is_restored_when_the_container_is_killed_from_outside(screens):
    s = shell(screens, "--name", "mc-tty-kill")
    assert termios.tcgetattr(s.fd) != s.settings          # raw while attached
    pid = state.read("mc-tty-kill")["main_pid"]
    os.kill(pid, signal.SIGKILL)
    assert s.exit_code() == 137
    assert termios.tcgetattr(s.fd) == s.settings
    assert state.names() == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_to_the_cli_restores_the_terminal_and_stops_the_container(screens, sig):
    s = shell(screens)
    os.kill(s.pid, sig)
    assert s.exit_code() == 137
    assert termios.tcgetattr(s.fd) == s.settings
    assert state.names() == []


def test_exec_it_into_a_running_container(screens):
    assert mc("run", "-d", "--name", "mc-tty-exec", "--", "sleep", "60").returncode == 0
    s = screens("exec", "-it", "mc-tty-exec", "/bin/sh")
    s.wait_until_raw()
    s.expect(PROMPT)
    s.type("tty; ps\r")
    out = s.expect(PROMPT)
    assert "/dev/pts/0" in out and "sleep 60" in out
    s.type("sleep 100\r")
    time.sleep(0.5)
    s.type(b"\x03")
    s.type("exit 6\r")
    assert s.exit_code() == 6
    assert termios.tcgetattr(s.fd) == s.settings
    assert mc("rm", "-f", "mc-tty-exec").returncode == 0


def test_without_t_a_command_gets_pipes_never_the_callers_terminal(screens):
    """From a terminal, `run` and `exec` without -t: no terminal inside, and nothing
    that could push keys into the caller's (TIOCSTI)."""
    assert mc("run", "-d", "--name", "mc-tty-pipes", "--", "sleep", "60").returncode == 0
    probe = ("tty; for fd in 0 1 2; do readlink /proc/self/fd/$fd; done; "
             "echo typed | cat")
    for args in (["run", "--", "sh", "-c", probe], ["exec", "mc-tty-pipes", "sh", "-c", probe],
                 ["run", "-i", "--", "sh", "-c", probe]):
        s = screens(*args)
        out = s.expect("typed")
        assert "not a tty" in out, out
        assert "/dev/pts" not in out and "pipe:" in out, out
        assert s.exit_code() == 0
    mc("rm", "-f", "mc-tty-pipes")


def test_run_i_passes_the_keyboard_in_through_a_pipe(screens):
    s = screens("run", "-i", "--", "sh", "-c", "read line; echo got:$line")
    s.type("hello\r")
    s.expect("got:hello")
    assert s.exit_code() == 0


def test_it_without_a_terminal_fails_as_docker_does():
    result = subprocess.run(CLI + ["run", "-it", "--", "sh"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 125
    assert result.stderr.strip().splitlines() == [
        "minicontainer: the input device is not a TTY: drop -t, or run it in a terminal"]
    assert state.names() == []


def test_t_without_i_still_shows_a_terminal_to_the_command():
    result = subprocess.run(CLI + ["run", "-t", "--", "sh", "-c", "tty; exit 4"],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert result.returncode == 4
    assert result.stdout == b"/dev/pts/0\r\n"     # through the pty: \n became \r\n


@pytest.mark.parametrize("args, message", [
    (["run", "-it", "--detach-keys", "ctrl-", "--", "sh"], "detach keys"),
    (["run", "-t", "--namespaces", "pid", "--", "sh"], "-t needs the mnt namespace"),
    (["attach", "ghost"], "no container named"),
    (["run", "--sig-proxy", "maybe", "--", "true"], "invalid choice"),
])
def test_bad_terminal_options_are_one_line(args, message):
    result = mc(*args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert state.names() == []


def test_attach_to_a_container_without_a_terminal_says_where_its_output_is():
    assert mc("run", "-d", "--name", "mc-tty-none", "--", "sleep", "30").returncode == 0
    try:
        result = mc("attach", "mc-tty-none")
        assert result.returncode == 125
        assert "`minicontainer logs mc-tty-none`" in result.stderr
    finally:
        mc("rm", "-f", "mc-tty-none")


def test_sig_proxy_false_stops_the_container_at_the_first_ctrl_c():
    run = subprocess.Popen(CLI + ["run", "--sig-proxy=false", "--name", "mc-tty-noproxy",
                                  "--", "sh", "-c", "trap 'echo trapped' INT; sleep 30"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while "running" not in mc("ps").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=10) in (130, 137, 143)
    out, err = run.communicate()
    assert "trapped" not in out                 # never passed on
    assert "stopping mc-tty-noproxy" in err
    assert state.names() == []


@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is installed by `make test`")
def test_in_tmux_a_real_terminal_program():
    """tmux is a terminal emulator with a scripting interface: send keys, read the
    screen, resize the window, as a person at a keyboard would."""
    session = f"mc-tty-{os.getpid()}"
    tmux = ["tmux", "-L", session]
    subprocess.run(tmux + ["new-session", "-d", "-s", session, "-x", "90", "-y", "25",
                           "bash", "--norc", "--noprofile"], check=True,
                   env={**os.environ, "PS1": "host$ "})
    try:
        def screen() -> str:
            return subprocess.run(tmux + ["capture-pane", "-p", "-t", session],
                                  capture_output=True, text=True).stdout

        def keys(*what: str) -> None:
            subprocess.run(tmux + ["send-keys", "-t", session, *what], check=True)

        def wait_for(text: str) -> None:
            deadline = time.monotonic() + 15
            while text not in screen():
                assert time.monotonic() < deadline, f"{text!r} not on screen:\n{screen()}"
                time.sleep(0.1)

        keys("stty -g > /tmp/mc-tty-before; clear", "Enter")
        keys(" ".join(CLI) + " run -it --name mc-tty-tmux -- /bin/sh", "Enter")
        wait_for("/ #")
        keys("stty size", "Enter")
        wait_for("25 90")
        subprocess.run(tmux + ["resize-window", "-t", session, "-x", "70", "-y", "20"],
                       check=True)
        keys("clear; stty size", "Enter")
        wait_for("20 70")
        keys("sleep 100", "Enter")
        time.sleep(0.5)
        keys("C-c")
        keys("echo still here", "Enter")
        wait_for("still here")
        keys("C-p", "C-q")
        wait_for("detached from mc-tty-tmux")
        keys("clear; stty -g | cmp - /tmp/mc-tty-before && echo same settings", "Enter")
        wait_for("same settings")
        keys(" ".join(CLI) + " attach mc-tty-tmux", "Enter")
        time.sleep(1)
        keys("exit 9", "Enter")
        wait_for("exit 9\nhost$")
        keys("echo code $?", "Enter")
        wait_for("code 9")
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)
        subprocess.run(CLI + ["rm", "-f", "mc-tty-tmux"], capture_output=True)
        socket_file = f"/tmp/tmux-{os.getuid()}/{session}"
        if os.path.exists(socket_file):
            os.remove(socket_file)
        if os.path.exists("/tmp/mc-tty-before"):
            os.remove("/tmp/mc-tty-before")


# -- found by an attack review ------------------------------------------------------------

def test_a_dit_command_that_ends_at_once_is_still_a_container_to_remove():
    """Its record was saved again after the keeper started, when the command was a
    zombie already: a pid without a start time, refused by every command after."""
    for n in range(3):
        assert mc("run", "-dit", "--name", f"mc-tty-quick{n}", "--", "sh", "-c",
                  "exit 4").returncode == 0
    time.sleep(0.5)
    for n in range(3):
        assert f"mc-tty-quick{n}" in mc("ps", "-a").stdout
        assert "exited (4)" in mc("ps", "-a").stdout
        removed = mc("rm", f"mc-tty-quick{n}")
        assert removed.returncode == 0, removed.stderr
    assert state.names() == [] and keepers() == []


def test_the_keeper_imports_nothing_from_the_callers_directory(tmp_path):
    """`python -m` puts the working directory first on sys.path: a selectors.py there
    would run as root in the keeper."""
    (tmp_path / "selectors.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    script = os.path.join(os.path.dirname(sys.executable), "minicontainer")
    started = subprocess.run([script, "run", "-dit", "--name", "mc-tty-cwd", "--", "sh"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
    try:
        assert started.returncode == 0, started.stderr
        (keeper,) = keepers()
        assert os.readlink(f"/proc/{keeper}/cwd") == "/"
        assert not (tmp_path / "ran").exists()
    finally:
        mc("rm", "-f", "mc-tty-cwd")


def test_a_container_that_closes_its_terminal_can_still_be_detached_and_ends(screens):
    s = screens("run", "-it", "--name", "mc-tty-closed", "--", "sh", "-c",
                "exec </dev/null >/dev/null 2>&1; sleep 3; exit 7")
    s.wait_until_raw()
    time.sleep(0.5)
    s.type(b"\x10\x11")                       # still read, though nothing goes in
    s.expect("detached from mc-tty-closed")
    assert s.exit_code() == 0
    deadline = time.monotonic() + 10
    while "exited (7)" not in mc("ps", "-a").stdout:  # the keeper outlived the closed terminal
        assert time.monotonic() < deadline, mc("ps", "-a").stdout
        time.sleep(0.2)
    assert mc("rm", "mc-tty-closed").returncode == 0
    s = screens("run", "-it", "--", "sh", "-c", "exec </dev/null >/dev/null 2>&1; exit 6")
    assert s.exit_code() == 6                   # and without detaching, the code comes back
    assert termios.tcgetattr(s.fd) == s.settings


def test_attach_with_nothing_to_type_shows_the_output_to_the_end():
    assert mc("run", "-dit", "--name", "mc-tty-null", "--", "sh", "-c",
              "sleep 1; echo the-end; exit 2").returncode == 0
    attached = subprocess.run(CLI + ["attach", "mc-tty-null"], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=30)
    assert (attached.returncode, "the-end" in attached.stdout) == (2, True), attached.stderr
    mc("rm", "mc-tty-null")


def test_a_client_that_never_reads_does_not_stop_the_container():
    """The keeper reads the container's output whatever its client does."""
    from minicontainer.console import Client
    assert mc("run", "-dit", "--name", "mc-tty-stuck", "--", "sh", "-c",
              "sleep 1; head -c 3000000 /dev/zero | tr '\\0' x; echo; echo flooded; "
              "sleep 30").returncode == 0
    stuck = Client(state.containers_dir() / "mc-tty-stuck", "mc-tty-stuck")  # never reads
    try:
        deadline = time.monotonic() + 30
        while "flooded" not in mc("logs", "mc-tty-stuck").stdout:
            assert time.monotonic() < deadline, "the container was held up by its client"
            time.sleep(0.3)
    finally:
        stuck.close()
        mc("rm", "-f", "mc-tty-stuck")


def test_sigquit_to_the_cli_restores_the_terminal(screens):
    s = shell(screens)
    os.kill(s.pid, signal.SIGQUIT)
    assert s.exit_code() == 137
    assert termios.tcgetattr(s.fd) == s.settings
    assert "SIGQUIT: stopping the command" in s.seen.decode(errors="replace")


# -- the Python API, and the parts ---------------------------------------------------------

def test_the_python_api_hands_over_the_terminal_as_its_master():
    with Container("/bin/sh", tty=True, cgroup=False) as c:
        c.start(window=(12, 34))
        os.write(c.console, b"tty; stty size; exit 2\n")
        seen = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = os.read(c.console, 4096)
            except OSError:                      # EIO: the shell has gone
                break
            seen += chunk
        assert b"/dev/pts/0" in seen and b"12 34" in seen
        assert c.wait(10).exit_code == 2


def test_no_process_in_the_container_holds_the_master():
    with Container(["sh", "-c", "ls -l /proc/[0-9]*/fd/ 2>/dev/null; ls -l /dev/console"],
                   tty=True, cgroup=False) as c:
        c.start()
        seen = b""
        while True:
            try:
                chunk = os.read(c.console, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        c.wait(10)
    assert b"/dev/pts/0" in seen and b"ptmx" not in seen
    assert b"136," in seen                      # /dev/console is the pty (major 136)


def test_detach_keys_are_parsed_as_docker_does():
    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    assert parse_detach_keys("ctrl-a,d") == b"\x01d"
    assert parse_detach_keys("ctrl-@,ctrl-[") == b"\x00\x1b"
    assert parse_detach_keys("") == b""
    for bad in ("ctrl-", "ctrl-pp", "é", "ctrl-1", "ab"):
        with pytest.raises(InvalidArgument):
            parse_detach_keys(bad)


def test_detach_keys_pass_on_what_turns_out_not_to_be_them():
    keys = DetachKeys(b"\x10\x11")
    assert keys.feed(b"ab\x10") == (b"ab", False)       # held back: maybe the start
    assert keys.feed(b"c") == (b"\x10c", False)         # it was not
    assert keys.feed(b"\x10\x10") == (b"\x10", False)   # the second may start it again
    assert keys.feed(b"\x11tail") == (b"", True)
    assert DetachKeys(b"").feed(b"\x10\x11") == (b"\x10\x11", False)


# -- faults: the keeper is found, or ends by itself ----------------------------------------

def test_an_exception_while_starting_the_keeper_leaves_nothing_behind(monkeypatch):
    from hostcheck import host_objects

    def fail(*args, **kwargs):
        raise RuntimeError("fault injected")
    before = host_objects()
    monkeypatch.setattr("minicontainer.console.start", fail)
    with pytest.raises(RuntimeError, match="fault injected"):
        Container("sleep 30", tty=True).start(detach=True)
    assert host_objects() == before


KILLED_AFTER_THE_KEEPER = """
import os, signal
from minicontainer import console
from minicontainer.container import Container
real = console.start
def start_then_die(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)     # before the record names the keeper
console.start = start_then_die
Container("sleep 30", tty=True).start(detach=True)
"""


def test_an_owner_killed_before_recording_its_keeper_leaves_nothing_after_cleanup():
    """The record does not name the keeper yet: removing the container ends it anyway
    (the keeper ends with the container's first process)."""
    from hostcheck import host_objects
    before = host_objects()
    owner = subprocess.run([sys.executable, "-c", KILLED_AFTER_THE_KEEPER],
                           capture_output=True, text=True, timeout=60)
    assert owner.returncode == -9, owner.stderr
    assert keepers(), "the keeper never ran: the test proves nothing"
    assert mc("cleanup", "--all").returncode == 0
    deadline = time.monotonic() + 5
    while keepers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host_objects() == before
