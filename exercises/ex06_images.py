"""Exercise 06 — images: turn a layer's whiteouts into the marks overlayfs reads.

A layer tarball, unpacked as it is, keeps its deletions as empty files: `.wh.NAME`
("NAME from the layers below is gone") and `.wh..wh..opq` ("this directory hides
everything below it"). overlayfs reads neither. It wants, for a deleted NAME, a
character device numbered 0:0 named NAME; for an opaque directory, the xattr
`trusted.overlay.opaque` set to b"y" on that directory.

Docker's overlay2 driver converts the same two marks while it reads the tarball (moby,
pkg/archive/archive_linux.go: overlayWhiteoutConverter.ConvertRead), and so does
minicontainer's store (images/layers.py). Here you convert after a plain extraction,
which is easier to watch: os.walk never follows a symlink a layer holds (one could
point out of the layer, at the host's files), so keep its default.

Check with `grade("06")` in the notebook or `make check EX=06`.
"""
import os  # noqa: F401
import stat  # noqa: F401
from pathlib import Path

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def convert_whiteouts(layer: Path) -> None:
    """In the unpacked layer directory `layer` (and every directory below it): replace
    each `.wh..wh..opq` file by the xattr trusted.overlay.opaque = b"y" on the directory
    that held it, and each other `.wh.NAME` file by a character device 0:0 named NAME."""
    # TODO
    raise NotImplementedError(
        "os.walk(layer) visits every directory; os.mknod(path, stat.S_IFCHR | 0o000, "
        "os.makedev(0, 0)) makes a whiteout device; os.setxattr(directory, "
        "'trusted.overlay.opaque', b'y') marks a directory opaque; remove each .wh. file")
