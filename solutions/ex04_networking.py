"""Exercise 04 — networking: handing out addresses on a bridge.

Check with `grade("04")` in the notebook or `make check EX=04`.
"""
import ipaddress


def free_address(subnet: str, taken: set[str]) -> str:
    """The first host address of `subnet` ("10.213.0.0/24") not in `taken`."""
    for address in ipaddress.ip_network(subnet).hosts():
        if str(address) not in taken:
            return str(address)
    raise ValueError(f"no free address left in {subnet}")
