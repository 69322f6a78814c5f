"""A JSON object read field by field, so that nothing in it is silently ignored.

An OCI bundle's config.json is untrusted input, and a runtime that skips a field
it does not know runs a container other than the one asked for. Fields takes each
field it is asked for out of its object, checked for its JSON type; whatever is
left when the reader is done is refused by its JSON path (bundles.py, bundle_linux.py).
"""
from __future__ import annotations

from .errors import BadBundle


class Fields:
    """A JSON object read field by field: whatever is left unread is refused by name."""

    def __init__(self, value: object, path: str) -> None:
        """The object at `path` (e.g. "process.user"); BadBundle if it is not one."""
        if not isinstance(value, dict):
            raise BadBundle(f"config.json: {path or 'the file'} is not a JSON object")
        self.left, self.path = dict(value), path

    def take(self, key: str, kind: type | tuple, default: object = None) -> object:
        """The field `key` if it has the JSON type `kind`, else `default` if absent."""
        if key not in self.left:
            return default
        value = self.left.pop(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BadBundle(f"config.json: {self.name(key)} has the wrong type "
                            f"({type(value).__name__})")
        return value

    def name(self, key: str) -> str:
        """The JSON path of `key`."""
        return f"{self.path}.{key}" if self.path else key

    def refuse(self, key: str, why: str = "") -> BadBundle:
        """The error for a field we cannot honour."""
        return BadBundle(f"config.json: {self.name(key)} is not supported by minicontainer "
                         f"yet{why}")

    def bad(self, key: str, why: str) -> BadBundle:
        """The error for a field whose value is wrong (`why` says how)."""
        return BadBundle(f"config.json: {self.name(key)} {why}")

    def done(self) -> None:
        """Refuse the first field nobody read: nothing is silently ignored."""
        for key in self.left:
            raise self.refuse(key)
