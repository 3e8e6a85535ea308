"""Encoders: text → unit-norm float32 concept vectors."""

from dualpath.encoding.encoder import (
    Encoder,
    SentenceTransformerEncoder,
    load_encoder,
    normalize_rows,
    resolve_model_path,
)

__all__ = ["Encoder", "SentenceTransformerEncoder", "load_encoder", "normalize_rows", "resolve_model_path"]
