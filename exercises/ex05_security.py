"""Exercise 05 — layer 5: what root in a container may still do, and an attack of your own.

Check with `grade("05")` in the notebook or `make check EX=05`.
"""
from minicontainer.security import CAPABILITIES  # noqa: F401  (name → number)


def capability_bits(names: list[str]) -> int:
    """The mask the kernel shows as CapEff in /proc/PID/status for these capabilities:
    bit N set for capability number N. ["CHOWN", "KILL"] → 0b100001 = 0x21."""
    # TODO
    raise NotImplementedError("1 << CAPABILITIES[name] for each name, combined with |")


def see_a_host_process() -> str:
    """A shell command for the escape lab: it must exit 0 only if, from inside the
    container, it can see the host process whose pid is in $PID and whose command
    line contains "mc-escape-target". Harmless: it only reads."""
    # TODO
    raise NotImplementedError("every process has a /proc/PID/cmdline; grep exits 0 "
                              "when it finds what it looks for")
