"""Atomic writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dualpath.errors import DualPathError

log = logging.getLogger(__name__)


def real_path(path: str | Path) -> Path:
    """`path` absolute with every symlink resolved (the final component too, even if it does not exist yet).

    Writers lock and replace the real directory, so a bank reached through a link (`current -> bank-v7`)
    is written in place, behind the link, and two writers reaching it by different names share one lock.
    """
    return Path(os.path.realpath(path))


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _give_mode(tmp: Path, target: Path, default: int) -> None:
    """The temporary file or directory that will replace `target` gets `target`'s permissions, or for a new
    one the usual `default & ~umask`: mkstemp/mkdtemp make them private (0600/0700), and the swap would
    otherwise hide a bank from the other users (a service account) that could read it."""
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except OSError:
        mode = default & ~_UMASK
    os.chmod(tmp, mode)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is renamed over `target`.

    On an exception the temporary file is removed and `target` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _give_mode(tmp, target, 0o666)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | Path, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: str | Path, obj: Any) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    """`json.dumps(..., default=json_default)` for what reaches JSON from metrics and configs.

    numpy scalars and arrays become lists and numbers, pydantic models (a lane, a config section)
    their JSON form, anything else (a Path) its string.
    """
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


# Test hooks (used by tests/test_concurrency.py to kill a real process at a chosen instant):
# DUALPATH_PAUSE_AT="swap:3" sleeps 3 s at the named point; DUALPATH_NO_RENAME_EXCHANGE=1 forces the
# two-rename swap that systems without renameat2(RENAME_EXCHANGE) use.
PAUSE_ENV = "DUALPATH_PAUSE_AT"
NO_EXCHANGE_ENV = "DUALPATH_NO_RENAME_EXCHANGE"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def pause_point(name: str) -> None:
    """Sleep here if $DUALPATH_PAUSE_AT names this point (`name:seconds`); a no-op otherwise."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    for item in spec.split(","):
        point, _, seconds = item.partition(":")
        if point.strip() == name:
            log.warning("pausing %s s at %r (%s is set)", seconds or "5", name, PAUSE_ENV)
            time.sleep(float(seconds or 5))


def _load_renameat2() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2() if sys.platform.startswith("linux") else None


def exchange_paths(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if _renameat2 is None or os.environ.get(NO_EXCHANGE_ENV):
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(entry: Path, target: Path) -> int | None:
    """The pid in `.<name>.<pid>.<random>.(tmpdir|old)`; None for names written otherwise."""
    rest = entry.name[len(target.name) + 2 :].split(".")
    if len(rest) != 3 or not rest[0].isdigit():
        return None
    return int(rest[0])


def _leftovers(target: Path, suffix: str) -> list[tuple[Path, int]]:
    found = []
    for entry in target.parent.glob(f".{glob.escape(target.name)}.*.{suffix}"):
        pid = _owner_pid(entry, target)
        if pid is not None:
            found.append((entry, pid))
    return found


def recover_directory(target: str | Path, wait_s: float = 5.0) -> bool:
    """Put back a directory a killed two-rename swap left aside; True if `target` exists afterwards.

    Only the no-RENAME_EXCHANGE swap has a moment without `target`; a swapper still alive is given
    `wait_s` to finish its second rename before anything is touched.
    """
    target = real_path(target)
    deadline = time.monotonic() + wait_s
    while not target.exists():
        asides = _leftovers(target, "old")
        if not asides:
            return False
        if any(pid_alive(pid) for _, pid in asides):
            if time.monotonic() >= deadline:
                return target.exists()
            time.sleep(0.02)
            continue
        newest = max(asides, key=lambda item: item[0].stat().st_mtime)[0]
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rename(newest, target)  # fails harmlessly if a concurrent recoverer won
            log.warning("recovered %s from %s (a swap was interrupted)", target, newest.name)
    return True


def _clean_leftovers(target: Path) -> None:
    # Only what a dead process left: a live writer's temp dir (another checkpoint writer, a build
    # of another bank name sharing the folder) is never touched. A set-aside copy is deleted only
    # once `target` exists, so the only copy of a bank is never removed.
    for entry, pid in _leftovers(target, "tmpdir"):
        if not pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
    if target.exists():
        for entry, pid in _leftovers(target, "old"):
            if not pid_alive(pid):
                shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; on success it replaces `target`.

    At every instant `target` is the old directory or the new one: the swap is one atomic
    renameat2(RENAME_EXCHANGE) where the system has it. Elsewhere the old directory is renamed
    aside, then the new one in; a kill between the two leaves the old one aside, and
    `recover_directory` (run here and when a bank is opened) puts it back. Temporary names carry
    the writer's pid, and only a dead writer's leftovers are removed.
    """
    target = real_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    _clean_leftovers(target)
    pid = os.getpid()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{pid}.", suffix=".tmpdir", dir=target.parent))
    try:
        _give_mode(tmp, target, 0o777)
        yield tmp
        pause_point("swap")
        if not target.exists():
            os.rename(tmp, target)
        elif exchange_paths(tmp, target):
            pass  # tmp now holds the old directory; removed below
        else:
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.{pid}.", suffix=".old", dir=target.parent))
            aside.rmdir()
            os.replace(target, aside)
            pause_point("swap-aside")
            os.replace(tmp, target)
            tmp = aside
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_output_directory(path: str | Path, what: str = "--out") -> Path:
    """`path`, refused in one line if it exists and is not a directory (a file is never turned into one)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DualPathError(f"refusing to write to {path} ({what}): it exists and is not a directory")
    return path


def output_directory(path: str | Path, what: str = "--out") -> Path:
    """`path` as a directory to write into, created if missing; a one-line refusal if something else is there."""
    path = check_output_directory(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DualPathError(f"cannot create the directory {path} ({what}): {err.strerror or err}") from None
    return path


STAGING_PREFIX = ".staging."


@contextlib.contextmanager
def staged_files(out: str | Path, what: str = "--out") -> Iterator[Path]:
    """Yield a fresh temporary directory inside `out`; on success each file written there replaces its
    namesake in `out`, one atomic rename each.

    Only the files written are replaced: whatever else `out` holds (a user's notes, an older file of
    another name) is never touched, and on an exception nothing in `out` changes.
    """
    out = output_directory(out, what)
    for leftover in out.glob(f"{STAGING_PREFIX}*.tmpdir"):  # a killed writer's, never a live one's
        pid = leftover.name[len(STAGING_PREFIX) :].split(".")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}.", suffix=".tmpdir", dir=out))
    try:
        yield tmp
        for entry in sorted(tmp.iterdir()):
            if entry.is_file():
                with open(entry, "rb+") as fh:
                    os.fsync(fh.fileno())
                destination = out / entry.name
                if destination.is_dir() and not destination.is_symlink():
                    raise DualPathError(f"refusing to replace the directory {destination} with a file")
                os.replace(entry, destination)
        _fsync_dir(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
