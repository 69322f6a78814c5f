"""The caller is never changed — checked where it matters: inside a real Jupyter kernel.

A notebook's kernel has threads (heartbeat, I/O) and is the process the course drives
the package from. After it has run, exec'd into and stopped containers, its own
namespaces, root, working directory, hostname and mount table are as before.
"""
from __future__ import annotations

import textwrap

from jupyter_client.manager import start_new_kernel

CELL = textwrap.dedent("""
    import os, socket, threading
    from minicontainer import Container, run
    from minicontainer.namespaces import ns_ids

    def view():
        return (ns_ids(), os.stat("/").st_ino, os.getcwd(), socket.gethostname(),
                open("/proc/self/mountinfo").read())

    before = view()
    first = run("hostname; echo $$", hostname="inside")
    with Container(["sleep", "30"], init=True) as c:
        c.start()
        exec_out = c.exec("hostname").stdout.strip()
        stopped = c.stop(timeout=5).exit_code
    wired = run("ip -o -4 addr show eth0", network="mc-br0").stdout  # pyroute2 under asyncio
    print(threading.active_count() > 1, first.stdout.split(), exec_out == c.name, stopped,
          "inet 10.213." in wired, view() == before)
""")


def test_a_jupyter_kernel_keeps_its_namespaces_and_mounts():
    manager, client = start_new_kernel(kernel_name="python3")
    output: list[str] = []

    def collect(message):
        if message["msg_type"] == "stream":
            output.append(message["content"]["text"])
        elif message["msg_type"] == "error":
            output.append("\n".join(message["content"]["traceback"]))

    try:
        reply = client.execute_interactive(CELL, timeout=60, output_hook=collect)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok", "".join(output)
    assert "".join(output).split() == ["True", "['inside',", "'1']", "True", "143", "True",
                                       "True"]
