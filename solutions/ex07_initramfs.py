"""Exercise 07 — the VM's first filesystem: one record of a newc cpio archive.

Check with `grade("07")` in the notebook or `make check EX=07`.
"""


def cpio_entry(inode: int, name: str, mode: int, data: bytes) -> bytes:
    """One newc record: the magic "070701", then 13 fields, each 8 hexadecimal digits:
    inode, mode, uid (0), gid (0), nlink (1), mtime (0), file size, 4 device numbers
    (0), the name's size counting its NUL, checksum (0); then the name and a NUL byte,
    NUL-padded to a multiple of 4 bytes; then the data, NUL-padded the same way."""
    name_bytes = name.encode() + b"\0"
    fields = [inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_bytes), 0]
    header = b"070701" + b"".join(b"%08X" % field for field in fields) + name_bytes
    header += b"\0" * (-len(header) % 4)
    return header + data + b"\0" * (-len(data) % 4)
