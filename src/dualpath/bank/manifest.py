"""The bank's manifest: what the directory holds, and cheap checks that the files are the ones written.

A quick checksum is the file's size plus a BLAKE2b hash of its first and last MiB: it catches
truncation, replacement and most damage without reading a multi-GB file. The full hash is
recorded too and checked on request (`verify="full"`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from dualpath.bank.layout import MANIFEST_FILE
from dualpath.errors import BankError

FORMAT_VERSION = 1
_BLOCK = 1 << 20


def file_checksum(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "head_tail": _head_tail_hash(path), "blake2b": _full_hash(path)}


def _head_tail_hash(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        digest.update(fh.read(_BLOCK))
        if size > _BLOCK:
            fh.seek(max(_BLOCK, size - _BLOCK))
            digest.update(fh.read(_BLOCK))
    return digest.hexdigest()


def _full_hash(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        while block := fh.read(16 * _BLOCK):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        if directory.exists():
            raise BankError(f"{directory} is not a bank: it is a file, not a directory")
        raise BankError(f"bank not found: {directory}")
    if not path.is_file():
        raise BankError(f"{directory} is not a bank: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BankError(f"{path} is corrupt: {err}") from None
    if not isinstance(manifest, dict):
        raise BankError(f"{path} is corrupt: expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BankError(f"{directory}: bank format {version!r} is not supported (this dualpath reads {FORMAT_VERSION})")
    for key in ("dim", "count", "dtype", "encoder", "backend", "index", "checksums"):
        if key not in manifest:
            raise BankError(f"{path} is corrupt: no {key!r} entry")
    # Types too: a hand-edited `"count": "abc"` must be this one line, not a ValueError deep in open().
    for key in ("dim", "count"):
        value = manifest[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "dim" else 0):
            raise BankError(f"{path} is corrupt: {key!r} is {value!r}, not a non-negative whole number")
    for key in ("dtype", "encoder", "backend"):
        if not isinstance(manifest[key], str):
            raise BankError(f"{path} is corrupt: {key!r} is {manifest[key]!r}, not a string")
    if not isinstance(manifest["index"], dict):
        raise BankError(f"{path} is corrupt: 'index' is not an object")
    checksums = manifest["checksums"]
    if not isinstance(checksums, dict) or not all(
        isinstance(name, str) and isinstance(entry, dict) and isinstance(entry.get("size"), int)
        for name, entry in checksums.items()
    ):
        raise BankError(f"{path} is corrupt: 'checksums' is not a map of file name to size and hashes")
    return manifest


def check_sizes(directory: Path, checksums: dict[str, dict[str, Any]]) -> None:
    """Every recorded file exists with its recorded size: the O(1) part of verification."""
    for name, expected in checksums.items():
        path = directory / name
        if not path.is_file():
            raise BankError(f"bank {directory} is missing {name}")
        size = path.stat().st_size
        if size != expected["size"]:
            raise BankError(
                f"bank {directory}: {name} is {size} bytes but the manifest says {expected['size']} "
                "(truncated or replaced)"
            )


def check_hashes(directory: Path, checksums: dict[str, dict[str, Any]], full: bool = False) -> None:
    for name, expected in checksums.items():
        path = directory / name
        actual = _full_hash(path) if full else _head_tail_hash(path)
        if actual != expected.get("blake2b" if full else "head_tail"):
            raise BankError(f"bank {directory}: checksum mismatch in {name} (the file was modified)")
