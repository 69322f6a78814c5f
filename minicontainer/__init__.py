"""minicontainer: build a container layer by layer, and a VM beside it.

    from minicontainer import Container, run
    run("hostname; ps").stdout

The layers, each a module that builds on the one before: chroot, namespaces (then
cgroups and network), composed in container.py.
"""
__version__ = "0.1.0"
__all__ = ["Container", "Result", "run"]


def __getattr__(name: str):
    # Imported on first use, so `minicontainer --help` starts fast.
    if name in __all__:
        from . import container
        return getattr(container, name)
    raise AttributeError(name)
