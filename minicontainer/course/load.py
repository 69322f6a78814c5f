"""Many containers at once — the seed's "30-50 servers on one platform" as a load test.

`churn` starts N containers, each runs one command to the end and is removed; it
returns how many went through per second. Sequentially, that is the cost of one
container's whole life: fork, namespaces, mounts, cgroup, (veth, address), exec,
teardown. Concurrently (a thread per container, the work itself done in the
kernel and in forked children), it shows how far that cost overlaps on this
machine's cores, and that nothing is shared that should not be: every container
gets its own name, cgroup and address.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from ..container import Container, Result

def run_one_to_the_end(command: str | list[str], options: dict) -> tuple[Result, str | None]:
    """One container's whole life: start, wait for its command, remove."""
    with Container(command, **options) as container:
        result = container.start().wait(timeout=120)
        address = container.attachment.address if container.attachment else None
    return result, address


def churn(count: int, concurrent: bool = False, network: str | None = None,
          command: str | list[str] = ("/bin/true",), **options) -> dict:
    """Run `count` containers one after another or all at once; the rate and results."""
    options = {"network": network, **options}
    command = list(command) if not isinstance(command, str) else command
    started = time.monotonic()
    if concurrent:
        with ThreadPoolExecutor(max_workers=count) as pool:
            lives = list(pool.map(lambda _: run_one_to_the_end(command, options), range(count)))
    else:
        lives = [run_one_to_the_end(command, options) for _ in range(count)]
    elapsed = time.monotonic() - started
    return {"count": count, "concurrent": concurrent, "network": network,
            "seconds": elapsed, "per_second": count / elapsed,
            "results": [result for result, _ in lives],
            "addresses": [address for _, address in lives]}
