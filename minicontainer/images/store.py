"""STAND-IN image store, so that `minicontainer pull` runs on the pull branch: the store
branch writes the real one (layers unpacked once, tags, garbage collection) with the
same three methods, and the merge keeps that one. Only what pull needs is here.

Blobs are files named by their digest, `ROOT/blobs/sha256/HEX`; `ROOT/images.json`
maps image names to manifest digests.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from .. import state
from ..errors import DigestMismatch


class Store:
    """Blobs by digest under `root`, and image names → manifest digests."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def blob_path(self, digest: str) -> Path:
        """Where the blob with this digest is kept."""
        algorithm, _, hexdigest = digest.partition(":")
        return self.root / "blobs" / algorithm / hexdigest

    def has_blob(self, digest: str) -> bool:
        """Whether the store holds the blob with this digest already."""
        return self.blob_path(digest).is_file()

    def ingest(self, digest: str, size: int | None, chunks: Iterable[bytes]) -> Path:
        """Write a blob, checking its sha256 and size; DigestMismatch and nothing kept if not."""
        path = self.blob_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        hasher, written = hashlib.sha256(), 0
        try:
            with open(partial, "wb") as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    written += len(chunk)
                    out.write(chunk)
            if "sha256:" + hasher.hexdigest() != digest or size not in (None, written):
                raise DigestMismatch(f"{digest}: received {written} bytes with sha256:"
                                     f"{hasher.hexdigest()}")
            os.replace(partial, path)              # all of it under its name, or nothing
        finally:
            partial.unlink(missing_ok=True)
        return path

    def add_image(self, name: str, manifest_digest: str) -> None:
        """Name the image whose manifest has this digest."""
        index = self.root / "images.json"
        images = json.loads(index.read_text()) if index.exists() else {}
        images[name] = manifest_digest
        index.with_suffix(".new").write_text(json.dumps(images, indent=1))
        os.replace(index.with_suffix(".new"), index)


def default_store() -> Store:
    """The store beside the containers' data: /var/lib/minicontainer/images for root."""
    return Store(state.data_dir().parent / "images")
