"""One writer per bank: an advisory file lock (`fcntl.flock`) beside the directory it protects.

The lock file is `.<name>.lock` next to `<name>`, not inside it: the bank directory itself is
swapped on every write (`fileio.atomic_directory`), and a lock on a file inside it would be a lock
on the old copy once the swap is done, letting a third writer in. The holder writes its pid,
command line and start time into the lock file so that a refused writer can say who holds it.

The kernel drops a flock when its holder dies (kill -9 included), so a crashed writer never leaves
a bank locked (at worst a lock file, which the next writer reuses and removes). The lock is
advisory: it orders dualpath's own writers (build, add, train, calibrate), not `rm -rf`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from dualpath.errors import DualPathError, LockedError
from dualpath.fileio import real_path

log = logging.getLogger(__name__)

WAIT_ENV = "DUALPATH_LOCK_WAIT"  # seconds a second writer waits for the lock before giving up (default 0)
_POLL_S = 0.1

# Locks this process holds, by lock file: (owning thread, depth). A writer that calls another writer
# (add → write_calibration, calibrate → write_calibration) must not deadlock on its own lock, and
# flock conflicts between two descriptors of one process, so nesting is counted here instead.
_held: dict[str, tuple[int, int]] = {}
_held_guard = threading.Lock()


def lock_path(target: str | Path) -> Path:
    """`.<name>.lock` beside the real directory: a bank reached through a symlink has the one lock of its target."""
    target = real_path(target)
    return target.parent / f".{target.name}.lock"


def default_wait() -> float:
    raw = os.environ.get(WAIT_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        return max(0.0, float(raw))
    except ValueError:
        log.warning("ignoring %s=%r: not a number of seconds", WAIT_ENV, raw)
        return 0.0


@contextlib.contextmanager
def write_lock(target: str | Path, wait: float | None = None, what: str = "bank") -> Iterator[None]:
    """Hold the exclusive writer lock of directory `target` (which need not exist yet).

    A second writer waits up to `wait` seconds (default: $DUALPATH_LOCK_WAIT, else 0), then raises
    `LockedError` naming the holder. Re-entrant within one thread.
    """
    path = lock_path(target)
    key = str(path)
    me = threading.get_ident()
    with _held_guard:
        owner, depth = _held.get(key, (None, 0))
        if owner == me:
            _held[key] = (me, depth + 1)
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                owner, depth = _held[key]
                _held[key] = (owner, depth - 1)
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, Path(target), default_wait() if wait is None else wait, what)
    try:
        _write_holder(fd)
        with _held_guard:
            _held[key] = (me, 1)
        try:
            yield
        finally:
            with _held_guard:
                _held.pop(key, None)
            # Unlinked while still held, so no lock file is left beside the bank; a waiter that
            # then gets the lock on the unlinked file notices (see _acquire) and starts over.
            with contextlib.suppress(OSError):
                os.unlink(path)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(path: Path, target: Path, wait: float, what: str) -> int:
    """An open descriptor of `path`, exclusively flocked, that is still the file at `path`."""
    deadline = time.monotonic() + wait
    logged = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except IsADirectoryError:
            raise DualPathError(
                f"cannot lock {what} {target}: its lock file {path} is a directory, not a file (remove it)"
            ) from None
        except OSError as err:
            raise DualPathError(f"cannot lock {what} {target}: {path}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
        else:
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                return fd
            os.close(fd)  # the previous holder unlinked it after we opened it: take the new file
            continue
        if time.monotonic() >= deadline:
            hint = "" if wait else f"; set {WAIT_ENV}=SECONDS to wait for it"
            raise LockedError(f"{what} {target} is being written by {holder(path)}: try again when it finishes{hint}")
        if not logged:
            log.info("waiting up to %.0f s for %s (held by %s)", wait, target, holder(path))
            logged = True
        time.sleep(_POLL_S)


def _write_holder(fd: int) -> None:
    # Written in place (not temp + rename): renaming would replace the inode the lock is held on.
    info = {
        "pid": os.getpid(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python",
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    data = json.dumps(info, ensure_ascii=True).encode() + b"\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def holder(path: Path) -> str:
    """'pid 123 (dualpath bank add ...) since ...', or a vaguer line if the holder has not written it yet."""
    try:
        info = json.loads(path.read_text(encoding="utf-8", errors="replace") or "{}")
        return f"pid {info['pid']} ({info['command']}) since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def models_lock(bank_path: str | Path | None, out: str | Path) -> contextlib.AbstractContextManager[None]:
    """The lock a model writer (training, calibration) takes for writing into `out`.

    Inside a bank it is the bank's own lock: `bank add` copies `models/` into the new bank, so a
    model saved meanwhile would be lost. Elsewhere the output directory gets a lock of its own.
    """
    target = Path(out).resolve()
    if target.exists() and not target.is_dir():
        raise DualPathError(f"refusing to write models to {out}: it exists and is not a directory")
    if bank_path is not None:
        bank = Path(bank_path).resolve()
        if target == bank or bank in target.parents:
            return write_lock(bank)
    return write_lock(target, what="model directory")
