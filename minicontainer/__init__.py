"""minicontainer: build a container layer by layer, and a VM beside it.

    from minicontainer import Container, run
    run("hostname; ps").stdout

Five layers, each a module that builds on the one before: chroot.py (a new /),
namespaces.py (its own view; terminal.py gives it a terminal), cgroups.py (a budget),
network.py (a wire), security.py (less power for its root); container.py composes them.
The VM beside it is in vm/, the course's tooling (grading, measuring, plots) in course/.
"""
__version__ = "0.1.0"
__all__ = ["Container", "Result", "run"]


def __getattr__(name: str):
    # Imported on first use, so `minicontainer --help` starts fast.
    if name in __all__:
        from . import container
        return getattr(container, name)
    raise AttributeError(name)
