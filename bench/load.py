"""Start-and-teardown rate: containers per second, one after another and all at once,
without and with a network (the seed's "30-50 servers on one platform").

Each container runs /bin/true and is removed; a life is fork, namespaces, mounts,
cgroup (with the default pids limit), layer 5, exec, wait, teardown — plus, with a
network, a veth pair, an address lease and their removal. Targets (issue 18):
>= 60/s sequential with neither cgroup nor network, >= 40/s with a cgroup, >= 25/s on
an existing bridge; concurrently, every container succeeds.

    .venv/bin/python bench/load.py [--count 50] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics

from minicontainer import network
from minicontainer.course.load import churn

TARGETS = {("sequential", "no cgroup, no network"): 60, ("sequential", "cgroup"): 40,
           ("sequential", "existing bridge"): 25}


def rate(count: int, rounds: int, concurrent: bool, network: str | None,
         cgroup: bool) -> tuple[float, int]:
    """The median rate over `rounds`, and how many containers failed in all."""
    rates, failures = [], 0
    for _ in range(rounds):
        run = churn(count, concurrent=concurrent, network=network, cgroup=cgroup)
        failures += sum(r.exit_code != 0 for r in run["results"])
        rates.append(run["per_second"])
    return statistics.median(rates), failures


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
        cases = [("no cgroup, no network", None, False), ("cgroup", None, True),
                 ("existing bridge", "mc-bench", True), ("implicit bridge", "mc-br0", True)]
        for name, net, cgroup in cases:
            for mode in ("sequential", "concurrent"):
                per_second, failures = rate(args.count, args.rounds, mode == "concurrent",
                                            net, cgroup)
                target = TARGETS.get((mode, name))
                if target is not None:
                    verdict = f"target >= {target}/s: {'met' if per_second >= target else 'MISSED'}"
                else:
                    verdict = f"failures: {failures} ({'met' if failures == 0 else 'MISSED'})"
                print(f"{mode:10} {name:22} {per_second:6.1f}/s  {verdict}")
    finally:
        network.remove("mc-bench")


if __name__ == "__main__":
    main()
