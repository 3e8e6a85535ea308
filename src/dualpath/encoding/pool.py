"""Encoding in several worker processes: what `bank build` and `bank add` use on a CPU with cores to spare.

A small model on a CPU does not use two cores well from one process (tokenising and the attention of short
sentences run mostly on one thread), so a pool of one-thread workers, each with its own copy of the encoder,
encodes a batch faster: docs/scaling.md has the measurement. `ProcessPoolEncoder` is an `Encoder`: `encode`
splits the texts into chunks, hands each to an idle worker and puts the vectors back in order, so a caller
(the build's batch loop, its checkpoints and progress bar) does not change.

Workers are started with `spawn` (never fork a process that has torch threads running), load the encoder from
local files as the parent did, and use `cores // processes` torch threads each. A worker that fails (an
exception, or a process that dies) stops the pool with one `EncoderError` line; the other workers are
terminated, so nothing hangs. Workers ignore Ctrl-C (the parent stops them) and exit when the parent goes.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from dualpath.config import EncoderConfig
from dualpath.encoding.encoder import CHUNK, Encoder, SentenceTransformerEncoder
from dualpath.errors import EncoderError

log = logging.getLogger(__name__)

AUTO_MAX = 4  # `processes: auto` starts at most this many workers (each holds its own copy of torch and the model)
# `auto` encodes this many concepts in the calling process before it starts workers. Starting them (each imports
# torch and loads the model) and the first batches cost more than they gain below ~10k concepts on 2 cores: a
# 4,516-concept build took 1.27x the one-process time, 11,440 concepts 0.85x and 1.16x (docs/scaling.md).
AUTO_START = 16_384
STOP_SECONDS = 10.0  # a worker asked to stop gets this long before it is terminated


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_count(processes: int | str, device: str) -> int:
    """Encoding processes for a setting: `auto` is one per core (at most AUTO_MAX) on the CPU, one on a GPU."""
    if processes == "auto":
        return 1 if device != "cpu" else max(1, min(cpu_cores(), AUTO_MAX))
    return int(processes)


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process (spawn context)
    conn: Connection
    chunk: int | None = None  # the chunk it is encoding


class ProcessPoolEncoder:
    """An `Encoder` that spreads each call over `processes` worker processes (see the module docstring).

    `start_after`: concepts encoded in this process, with `local`, before the workers start (0: at the first call).
    """

    def __init__(self, local: SentenceTransformerEncoder, processes: int, start_after: int = 0) -> None:
        if processes < 2:
            raise ValueError("a pool needs at least two processes")
        self.local = local
        self.name, self.dim = local.name, local.dim
        self.processes = processes
        self.start_after = start_after
        self.threads = max(1, cpu_cores() // processes)
        self.settings = EncoderConfig(
            name=local.name, batch_size=local.batch_size, max_seq_length=local.model.max_seq_length, device="cpu"
        ).model_dump(mode="json")
        self._workers: list[_Worker] = []
        self._encoded = 0
        self._failed: str | None = None

    def encode(self, texts: list[str]) -> np.ndarray:
        if self._failed is not None:
            raise EncoderError(self._failed)
        if not self._workers and self._encoded + len(texts) <= self.start_after:
            self._encoded += len(texts)
            return self.local.encode(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if not self._workers:
            self._start()
        try:
            return self._encode(texts)
        except BaseException as err:
            self._failed = str(err) if isinstance(err, EncoderError) else "encoding was interrupted"
            self.close()
            raise

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        log.info("encoding in %d worker processes of %d torch thread(s) each", self.processes, self.threads)
        for _ in range(self.processes):
            mine, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(theirs, self.settings, self.threads), daemon=True)
            process.start()
            theirs.close()
            self._workers.append(_Worker(process, mine))

    def _encode(self, texts: list[str]) -> np.ndarray:
        # Several chunks per worker, so a worker with short sentences takes another instead of waiting.
        size = max(1, min(CHUNK, -(-len(texts) // (2 * self.processes))))
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        todo = deque(range(len(chunks)))
        done: list[np.ndarray | None] = [None] * len(chunks)
        for worker in self._workers:
            if todo:
                self._send(worker, todo.popleft(), chunks)
        while any(w.chunk is not None for w in self._workers):
            busy = [w for w in self._workers if w.chunk is not None]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for worker in busy:
                if worker.conn in ready or worker.process.sentinel in ready:
                    done[worker.chunk] = self._receive(worker)  # type: ignore[index]
                    worker.chunk = None
                    if todo:
                        self._send(worker, todo.popleft(), chunks)
        return np.concatenate([d for d in done if d is not None], axis=0)

    def _send(self, worker: _Worker, chunk: int, chunks: list[list[str]]) -> None:
        try:
            worker.conn.send(chunks[chunk])
        except OSError:
            raise EncoderError(self._died(worker)) from None
        worker.chunk = chunk

    def _receive(self, worker: _Worker) -> np.ndarray:
        try:
            if not worker.conn.poll():
                raise EOFError
            status, payload = worker.conn.recv()
        except (EOFError, OSError):
            raise EncoderError(self._died(worker)) from None
        if status != "ok":
            raise EncoderError(f"an encoding worker failed: {payload}")
        return np.asarray(payload, dtype=np.float32)

    def _died(self, worker: _Worker) -> str:
        worker.process.join(1.0)
        code = worker.process.exitcode
        killed = code is not None and code < 0
        how = f"was killed by signal {-code} (out of memory?)" if killed else f"exited with code {code}"
        return f"encoding worker process {worker.process.pid} {how}; the build can be run again"

    def close(self) -> None:
        """Stop the workers (ask, then terminate whatever has not exited)."""
        workers, self._workers = self._workers, []
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in workers:
            worker.process.join(STOP_SECONDS if worker.chunk is None else 0.0)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(STOP_SECONDS)
            worker.conn.close()

    def __enter__(self) -> ProcessPoolEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def encoding_processes(encoder: Encoder, processes: int | str) -> Iterator[Encoder]:
    """`encoder`, or a pool of workers running copies of it when the setting asks for more than one process on the
    CPU; the pool is stopped on leaving. `auto` starts its workers only once AUTO_START concepts were encoded."""
    device = getattr(encoder, "device", None)
    count = worker_count(processes, device or "cpu")
    if count < 2 or device != "cpu" or not isinstance(encoder, SentenceTransformerEncoder):
        yield encoder
        return
    with ProcessPoolEncoder(encoder, count, AUTO_START if processes == "auto" else 0) as pool:
        yield pool


def _serve(conn: Connection, settings: dict[str, Any], threads: int) -> None:
    """A worker: load the encoder, then encode each list of texts received until None (or the parent goes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops us
    os.environ["OMP_NUM_THREADS"] = str(threads)
    failure = None
    try:
        import torch

        torch.set_num_threads(threads)
        encoder = SentenceTransformerEncoder(EncoderConfig(**settings))
    except Exception as err:  # reported for every chunk asked of this worker, in one line
        failure = f"{type(err).__name__}: {err}".splitlines()[0]
    while True:
        try:
            texts = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if texts is None:
            return
        try:
            if failure is not None:
                reply: tuple[str, Any] = ("error", failure)
            else:
                reply = ("ok", encoder.encode(texts))
        except Exception as err:
            reply = ("error", f"{type(err).__name__}: {err}".splitlines()[0])
        try:
            conn.send(reply)
        except OSError:
            return
