"""Start-and-teardown rate: containers per second, one after another and all at once,
without and with a network (the seed's "30-50 servers on one platform").

Each container runs /bin/true and is removed; a life is fork, namespaces, mounts,
cgroup (with the default pids limit), layer 5, exec, wait, teardown — plus, with a
network, a veth pair, an address lease and their removal. Targets (issue 8):
>= 50/s sequential without network, >= 20/s with network.

    .venv/bin/python bench/load.py [--count 50] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics

from minicontainer import network
from minicontainer.course.load import churn

TARGETS = {("sequential", "none"): 50, ("sequential", "existing bridge"): 20}


def rate(count: int, rounds: int, concurrent: bool, network: str | None) -> float:
    rates = []
    for _ in range(rounds):
        run = churn(count, concurrent=concurrent, network=network)
        assert all(r.exit_code == 0 for r in run["results"])
        rates.append(run["per_second"])
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    churn(5)                                   # warm up: image, imports, filter
    print(f"{args.count} containers per round, median of {args.rounds} rounds")
    # "existing bridge": made once, like Docker's docker0. "implicit": mc-br0 appears
    # with its first container and goes with its last, so in a row every container
    # also creates and removes the bridge and its firewall rules.
    network.create("mc-bench", explicit=True)
    try:
        cases = [("none", None), ("existing bridge", "mc-bench"), ("implicit bridge", "mc-br0")]
        for name, net in cases:
            for mode in ("sequential", "concurrent"):
                per_second = rate(args.count, args.rounds, mode == "concurrent", net)
                target = TARGETS.get((mode, name))
                verdict = "" if target is None else (
                    f"  target >= {target}/s: {'met' if per_second >= target else 'MISSED'}")
                print(f"{mode:10} network: {name:16} {per_second:6.1f}/s{verdict}")
    finally:
        network.remove("mc-bench")


if __name__ == "__main__":
    main()
