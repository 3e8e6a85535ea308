"""The Milvus index backend on Milvus Lite and on a real Milvus server: exact parity with FAISS, domain
filters, persistence, resume.

Every test that takes `milvus_uri` runs twice (a few, whose logic is the client's, on Lite only): on one
Milvus Lite database per module (starting one costs a fraction of a second) and on the Milvus standalone
server the session starts (conftest's
`milvus_server_uri`, reached through `http://127.0.0.1:PORT` as a cluster would be; skipped with the
reason where it cannot start). Each test's content gets its own collection, because collections are
named by what they hold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from dualpath.bank.faiss_backend import FaissBackend
from dualpath.bank.index_policy import AUTO_FLAT_MAX, AUTO_HNSW_MAX
from dualpath.bank.milvus_backend import MilvusBackend, milvus_index
from dualpath.config import BankConfig
from dualpath.errors import BankError

DIM = 32
DOMAINS = [None, "Arts", "History", 'quo"te\\d', "日本語"]


def clustered_unit_vectors(n: int, dim: int, seed: int, clusters: int = 12, duplicates: int = 0) -> np.ndarray:
    """Unit vectors around a few centres (like sentence embeddings); the last `duplicates` rows repeat
    earlier ones, so exact ties occur."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    if duplicates:
        x[n - duplicates :] = x[rng.integers(0, n - duplicates, duplicates)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def domains_for(n: int) -> list[str | None]:
    return [DOMAINS[i % len(DOMAINS)] for i in range(n)]


@pytest.fixture(scope="module", params=["lite", "server"])
def milvus_uri(request, tmp_path_factory) -> str:
    if request.param == "server":
        return request.getfixturevalue("milvus_server_uri")
    return str(tmp_path_factory.mktemp("milvus") / "bank.db")


def milvus_cfg(uri: str, index: str = "flat") -> BankConfig:
    return BankConfig(backend="milvus", milvus_uri=uri, index=index, dtype="float32")


def built(uri: str, vectors: np.ndarray, domains: list[str | None], index: str = "flat") -> tuple[MilvusBackend, dict]:
    backend = MilvusBackend.create(vectors.shape[1], milvus_cfg(uri, index))
    backend.add(np.arange(len(vectors)), vectors, domains)
    backend.save(Path("."))
    return backend, backend.describe()


def faiss_flat(vectors: np.ndarray, domains: list[str | None]) -> FaissBackend:
    backend = FaissBackend.create(vectors.shape[1], BankConfig(index="flat", dtype="float32"))
    backend.add(np.arange(len(vectors)), vectors, domains)
    return backend


def assert_same_top_k(ids_a, scores_a, ids_b, scores_b, tol: float = 1e-5) -> None:
    """Same ranked scores; the same ids except where scores tie at the k-th place (either order is right)."""
    np.testing.assert_allclose(scores_a, scores_b, atol=tol)
    for row in range(ids_a.shape[0]):
        kth = scores_a[row, -1]
        clear = scores_a[row] > kth + tol  # strictly above the boundary: must be the same concepts
        assert set(ids_a[row][clear]) == set(ids_b[row][scores_b[row] > kth + tol])
        for ids in (ids_a, ids_b):
            assert len(set(ids[row].tolist())) == ids.shape[1]  # no id twice


@pytest.fixture(scope="module")
def shared(milvus_uri):
    """A flat Milvus collection and a flat FAISS index over the same 2,000 clustered vectors (with ties); the
    first 1,100 have no domain, so their partition holds a segment a server would index."""
    vectors = clustered_unit_vectors(2000, DIM, seed=0, duplicates=200)
    domains = [None] * 1100 + domains_for(len(vectors) - 1100)
    milvus, _ = built(milvus_uri, vectors, domains)
    yield vectors, domains, milvus, faiss_flat(vectors, domains)
    milvus.close()


def test_flat_search_matches_faiss_flat_exactly(shared):
    vectors, _, milvus, faiss_index = shared
    # A server's loaded FLAT segments carry no index id (the index is the rows): waiting for one would last
    # until the timeout.
    assert milvus.wait_until_indexed(timeout_s=20.0)
    queries = np.concatenate([vectors[:20], clustered_unit_vectors(30, DIM, seed=2)])  # self-hits and fresh ones
    for k in (1, 10, 100):
        ids_m, scores_m = milvus.search(queries, k)
        ids_f, scores_f = faiss_index.search(queries, k)
        assert ids_m.dtype == np.int64 and scores_m.dtype == np.float32 and ids_m.shape == (len(queries), k)
        assert_same_top_k(ids_m, scores_m, ids_f, scores_f)
    # A duplicated vector ties with its copies: all of them come first, in whichever order.
    copies = set(np.flatnonzero((vectors == vectors[-1]).all(axis=1)).tolist())
    assert len(copies) >= 2
    ids_m, scores_m = milvus.search(vectors[-1:], len(copies))
    assert set(ids_m[0].tolist()) == copies
    np.testing.assert_allclose(scores_m[0], 1.0, atol=1e-5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(1, 50),
    domain=st.sampled_from([d for d in DOMAINS if d is not None]),
)
def test_domain_filtered_search_is_exact_search_within_the_domain(shared, seed, k, domain):
    vectors, domains, milvus, faiss_index = shared
    query = clustered_unit_vectors(3, DIM, seed=seed)
    ids, scores = milvus.search(query, k, domain=domain)
    members = np.array([i for i, d in enumerate(domains) if d == domain])
    brute = query @ vectors[members].T
    order = np.argsort(-brute, axis=1, kind="stable")[:, :k]
    assert_same_top_k(ids, scores, members[order], np.take_along_axis(brute, order, axis=1).astype(np.float32))
    assert all(domains[i] == domain for i in ids.ravel())
    # The FAISS backend's filter agrees (the two backends are interchangeable under a domain too).
    assert_same_top_k(ids, scores, *faiss_index.search(query, k, domain=domain))


# Client-side logic; a server adds seconds to each build and nothing this test checks.
@pytest.mark.parametrize("milvus_uri", ["lite"], indirect=True)
def test_fewer_hits_than_k_pad_with_minus_one(milvus_uri):
    vectors = clustered_unit_vectors(7, DIM, seed=3)
    backend, _ = built(milvus_uri, vectors, ["Arts", "Arts", "History", None, None, None, "History"])
    ids, scores = backend.search(vectors[:2], 5, domain="Arts")
    assert (ids[:, :2] >= 0).all() and (ids[:, 2:] == -1).all()
    assert np.isneginf(scores[:, 2:]).all()
    ids, _ = backend.search(vectors[:1], 3, domain="no such domain")
    assert (ids == -1).all()
    backend.close()


def test_add_delete_and_reopen_persist(milvus_uri):
    vectors = clustered_unit_vectors(600, DIM, seed=4)
    domains = domains_for(600)
    first, described = built(milvus_uri, vectors[:500], domains[:500])
    before = first.search(vectors[:10], 10)
    first.close()

    reopened = MilvusBackend.load(Path("bank"), DIM, milvus_cfg(milvus_uri), described)
    assert reopened.count() == 500
    np.testing.assert_array_equal(reopened.search(vectors[:10], 10)[0], before[0])

    # Append: new ids become searchable; the manifest entry grows only after save().
    reopened.add(np.arange(500, 600), vectors[500:], domains[500:])
    with pytest.raises(BankError, match="flushed"):
        reopened.describe()
    reopened.save(Path("bank"))
    grown = reopened.describe()
    assert (grown["rows"], grown["id_limit"]) == (600, 600)
    assert reopened.search(vectors[550:551], 1)[0][0, 0] == 550

    reopened.delete(np.array([3, 550, 10_000]))  # 10_000 was never there
    reopened.save(Path("bank"))
    after_delete = reopened.describe()
    assert after_delete["rows"] == 598 and reopened.count() == 598
    assert not np.isin([3, 550], reopened.search(vectors[[3, 550]], 5)[0]).any()
    reopened.close()

    final = MilvusBackend.load(Path("bank"), DIM, milvus_cfg(milvus_uri), after_delete)
    assert final.count() == 598
    assert final.search(vectors[551:552], 1)[0][0, 0] == 551
    final.close()

    # The superseded manifest entries no longer describe the collection: opening them fails.
    with pytest.raises(BankError, match=r"misaligned.*598 of the bank's vectors, the manifest 600"):
        MilvusBackend.load(Path("bank"), DIM, milvus_cfg(milvus_uri), grown)


def test_rows_beyond_the_manifest_are_never_returned(milvus_uri):
    """An interrupted append leaves rows the bank does not own: the bank still opens and never sees them."""
    vectors = clustered_unit_vectors(300, DIM, seed=5)
    backend, described = built(milvus_uri, vectors[:200], domains_for(200))
    backend.add(np.arange(200, 300), vectors[200:], domains_for(100))  # never saved: the manifest says 200
    backend.close()

    old = MilvusBackend.load(Path("bank"), DIM, milvus_cfg(milvus_uri), described)
    assert old.count() == 200
    ids, _ = old.search(vectors[200:260], 20)
    assert ids.max() < 200
    # Retrying the append overwrites the leftovers and completes.
    old.add(np.arange(200, 300), vectors[200:], domains_for(100))
    old.save(Path("bank"))
    assert old.count() == 300 and old.search(vectors[250:251], 1)[0][0, 0] == 250
    old.close()


class InterruptedVectors(np.ndarray):
    """Vectors whose reading fails after `allow` slices: a build killed half way through its inserts."""

    allow = 0

    def __getitem__(self, item):
        if isinstance(item, slice):
            if InterruptedVectors.allow <= 0:
                raise KeyboardInterrupt("simulated kill")
            InterruptedVectors.allow -= 1
        return np.asarray(self).__getitem__(item)


def test_interrupted_build_resumes_and_never_claims_missing_vectors(milvus_uri, monkeypatch):
    import dualpath.bank.milvus_backend as milvus_backend

    monkeypatch.setattr(milvus_backend, "INSERT_BATCH_BYTES", 100 * 4 * DIM)  # 100 vectors per insert
    vectors = clustered_unit_vectors(1000, DIM, seed=6)
    domains = domains_for(1000)
    interrupted = MilvusBackend.create(DIM, milvus_cfg(milvus_uri))
    InterruptedVectors.allow = 4
    with pytest.raises(KeyboardInterrupt):
        interrupted.add(np.arange(1000), vectors.view(InterruptedVectors), domains)
    with pytest.raises(BankError):
        interrupted.describe()  # nothing to record: ConceptBank never writes a manifest for it
    partial = interrupted._count("id >= 0")
    assert 0 < partial < 1000
    interrupted.close()

    resumed, described = built(milvus_uri, vectors, domains)
    assert resumed.collection == interrupted.collection  # same content → the same collection
    assert described["rows"] == 1000 and resumed.count() == 1000
    assert_same_top_k(*resumed.search(vectors[:20], 10), *faiss_flat(vectors, domains).search(vectors[:20], 10))
    resumed.close()


# Client-side logic; a server adds seconds to each build and nothing this test checks.
@pytest.mark.parametrize("milvus_uri", ["lite"], indirect=True)
def test_other_content_gets_its_own_collection(milvus_uri):
    a = clustered_unit_vectors(50, DIM, seed=7)
    first, da = built(milvus_uri, a, domains_for(50))
    second, db = built(milvus_uri, a[::-1].copy(), domains_for(50))
    third, dc = built(milvus_uri, a, domains_for(50), index="hnsw")
    assert len({da["collection"], db["collection"], dc["collection"]}) == 3
    assert first.count() == second.count() == third.count() == 50
    for backend in (first, second, third):
        backend.close()


def test_opening_checks_collection_dimension_and_count(milvus_uri, shared):
    _, _, milvus, _ = shared
    described = milvus.describe()
    with pytest.raises(BankError, match=r"dimension mismatch.*has dim 32, the bank 64"):
        MilvusBackend.load(Path("b"), 64, milvus_cfg(milvus_uri), described)
    with pytest.raises(BankError, match=r"misaligned.*holds 2000 of the bank's vectors, the manifest 2001"):
        MilvusBackend.load(Path("b"), DIM, milvus_cfg(milvus_uri), {**described, "rows": 2001})
    with pytest.raises(BankError, match="does not exist"):
        MilvusBackend.load(Path("b"), DIM, milvus_cfg(milvus_uri), {**described, "collection": "dualpath_gone"})


# Lite only: a server searches segments under 1,024 rows whole (these 3,000 rows in five domains' partitions),
# so there the test would hold whatever the index did; test_tuning holds a server's index to its recall.
@pytest.mark.parametrize("milvus_uri", ["lite"], indirect=True)
def test_hnsw_on_milvus_lite_finds_nearly_all_true_neighbours(milvus_uri):
    vectors = clustered_unit_vectors(3000, DIM, seed=8)
    backend, described = built(milvus_uri, vectors, domains_for(3000), index="hnsw")
    assert described["index_type"] == "HNSW"
    queries = clustered_unit_vectors(50, DIM, seed=9)
    ids, _ = backend.search(queries, 10)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])
    assert recall >= 0.9
    backend.close()


def test_index_kinds_map_to_milvus_indexes():
    assert milvus_index("auto", AUTO_FLAT_MAX - 1) == ("FLAT", {})
    assert milvus_index("auto", AUTO_FLAT_MAX)[0] == "HNSW"
    assert milvus_index("auto", AUTO_HNSW_MAX - 1)[0] == "HNSW"
    assert milvus_index("auto", AUTO_HNSW_MAX)[0] == "IVF_FLAT"
    assert milvus_index("ivf", 100_000) == ("IVF_FLAT", {"nlist": 1264})
    assert milvus_index("DISKANN", 10) == ("DISKANN", {})
    with pytest.raises(BankError, match="not a Milvus index"):
        milvus_index("IVF256,PQ16", 10)


def test_bad_uris_are_one_line_errors(tmp_path):
    with pytest.raises(BankError, match="needs a URI"):
        MilvusBackend.create(DIM, BankConfig(backend="milvus"))
    with pytest.raises(BankError, match=r"ending in \.db"):
        MilvusBackend.create(DIM, BankConfig(backend="milvus", milvus_uri=str(tmp_path / "bank.sqlite")))
    with pytest.raises(BankError, match=r"cannot connect to Milvus at http://127\.0\.0\.1:1"):
        MilvusBackend.create(DIM, BankConfig(backend="milvus", milvus_uri="http://user:secret@127.0.0.1:1"))
