"""What several test files do over the network: wait for a server to answer."""
from __future__ import annotations

import time
import urllib.request


def wait_for_http(url: str, tries: int = 50) -> str:
    """The body `url` answers with, asked up to `tries` times 0.1 s apart."""
    for _ in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return reply.read().decode()
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")
