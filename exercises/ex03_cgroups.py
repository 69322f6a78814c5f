"""Exercise 03 — cgroups: writing a budget the kernel understands.

Check with `grade("03")` in the notebook or `make check EX=03`.
"""
import re  # noqa: F401  (you may want it)

UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def memory_bytes(text: str) -> int:
    """"64M" → 67108864: a number and an optional unit k, m or g (binary, any case);
    a B or iB after the unit changes nothing ("64MB" and "64MiB" are 64M, as Docker's -m
    reads them: memory is counted in 1024s, never in 1000s)."""
    # TODO
    raise NotImplementedError("split the digits from the unit, multiply by UNITS; "
                              "refuse anything else with ValueError")


def cpu_max(cpus: float, period: int = 100_000) -> str:
    """cgroup v2's cpu.max for `cpus` CPUs: "QUOTA PERIOD" in microseconds."""
    # TODO
    raise NotImplementedError("in each period of `period` us the group may run "
                              "cpus * period us")
