"""How many threads torch, FAISS and numpy's BLAS use, and how a long loop reports progress: one policy for all callers.

Training, inference, the service and the miners all run small models and one-query searches on
machines that are often busy. Oversubscribed OpenMP teams spin against each other, so every part
asks this module for its thread counts instead of setting torch or FAISS directly. FAISS is
imported lazily: only a caller that searches a FAISS index pays for it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

from dualpath.errors import ConfigError
from dualpath.logs import progress_enabled

log = logging.getLogger(__name__)
T = TypeVar("T")


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run a block with `threads` torch intra-op threads, then restore the setting.

    `threads=0` picks half the cores (at least one). The models trained here are small: a second
    thread gains little, while oversubscribed OpenMP threads spin against each other; on a busy
    2-core machine two threads made an LVM training step 10x slower than one.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads if threads > 0 else max(1, (os.cpu_count() or 2) // 2))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def cuda_available() -> bool:
    """Whether torch sees a usable CUDA device (False for a CPU-only build of torch)."""
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: str | None) -> str:
    """`auto` (or None) → "cuda" where torch sees a GPU, else "cpu"; "cpu" / "cuda[:N]" as given, checked.

    Asking for CUDA where there is none is a one-line `ConfigError`, not a torch traceback deep in a run.
    """
    if device in (None, "auto"):
        return "cuda" if cuda_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        import torch

        if not cuda_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device is visible"
            raise ConfigError(f"device {device!r} was asked for but {why}; use --device cpu (or auto)")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return device
    raise ConfigError(f"unknown device {device!r}: use auto, cpu or cuda")


def limit_search_threads(threads: int) -> None:
    """Cap FAISS's OpenMP team for searches made on the calling thread.

    OpenMP sizes its team per calling thread, and a fresh worker thread gets one thread per core:
    with searches in parallel those teams spin against each other, and a one-query search got
    several times slower than with one thread. Call it on each worker thread.
    """
    import faiss

    faiss.omp_set_num_threads(threads)


@contextlib.contextmanager
def one_search_thread() -> Iterator[None]:
    """Run FAISS single-threaded in this thread for the duration, then restore the setting.

    FAISS parallelises flat, HNSW and IVF search over queries, so one query gains nothing from more
    threads, yet still pays for waking them: on a busy 2-core machine that was 10-30 ms per search
    against ~1 ms single-threaded (bench_bank.py). The count is per calling thread, so concurrent
    callers are not affected.
    """
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


@functools.cache
def _blas_controller() -> Any:
    import threadpoolctl

    return threadpoolctl.ThreadpoolController()  # finds the loaded BLAS libraries once (~ms)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run numpy's BLAS (OpenBLAS / MKL) on one thread for the block, then restore its setting.

    A generation step's matrix products are small (K × d mat-vecs); a second BLAS thread gains
    nothing there, and its spin-waiting after each call took the core from FAISS and torch: the
    single step on the 36k bank went from 7.6 ms to 9.7-10.5 ms with OpenBLAS's default 2 threads.
    The setting is process-wide, so concurrent callers share it; each restores what it found.
    """
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield


def batch_progress(items: Iterable[T], total: int, desc: str) -> Iterator[T]:
    """A tqdm bar on a terminal; in a log file, a line every ~10 % instead of a bar."""
    if progress_enabled():
        yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    every = max(1, total // 10)
    for i, item in enumerate(items, 1):
        yield item
        if i % every == 0 or i == total:
            log.debug("%s: %d/%d", desc, i, total)
