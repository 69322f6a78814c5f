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

from minicontainer.load import churn

TARGETS = {(False, None): 50, (False, "mc-br0"): 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    churn(5)                                   # warm up: image, imports, filter
    print(f"{args.count} containers per round, median of {args.rounds} rounds")
    for network in (None, "mc-br0"):
        for concurrent in (False, True):
            rates = []
            for _ in range(args.rounds):
                run = churn(args.count, concurrent=concurrent, network=network)
                assert all(r.exit_code == 0 for r in run["results"])
                rates.append(run["per_second"])
            rate = statistics.median(rates)
            target = TARGETS.get((concurrent, network))
            verdict = "" if target is None else (
                f"  target >= {target}/s: {'met' if rate >= target else 'MISSED'}")
            print(f"{'concurrent' if concurrent else 'sequential':10} "
                  f"{'network ' + network if network else 'no network':18} "
                  f"{rate:6.1f}/s{verdict}")


if __name__ == "__main__":
    main()
