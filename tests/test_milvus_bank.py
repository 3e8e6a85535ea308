"""Milvus-backed concept banks (Milvus Lite): the same bank, searches and generation as with FAISS.

The Milvus bank holds exactly the vectors and concepts of the shared wiki test bank (through
`ConceptBank.from_vectors`, so nothing is encoded twice), with the shared bank's trained models
copied in: anything that differs from the FAISS bank is the backend's doing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from dualpath.bank import ConceptBank
from dualpath.bank.milvus_backend import MilvusBackend
from dualpath.config import DualPathConfig
from dualpath.errors import BankError
from trained_models import tiny_config

PROMPT = "The Moon is Earth's only natural satellite. It orbits the planet at an average distance of 384,400 km."


def milvus_config(uri: str | Path, base: DualPathConfig | None = None) -> DualPathConfig:
    data = (base or DualPathConfig()).to_dict()
    data["bank"].update({"backend": "milvus", "milvus_uri": str(uri)})
    return DualPathConfig.from_dict(data)


def copy_as_milvus_bank(source: ConceptBank, out: Path, uri: Path, cfg: DualPathConfig | None = None) -> Path:
    """`source`'s concepts and vectors as a Milvus-backed bank at `out`."""
    n = len(source)
    ConceptBank.from_vectors(
        out,
        np.asarray(source.all_vectors()),
        source.concepts(np.arange(n)),
        source.encoder_name,
        milvus_config(uri, cfg),
    ).close()
    return out


@pytest.fixture(scope="module")
def lite_db(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("milvus") / "banks.db"


@pytest.fixture(scope="module")
def milvus_trained_bank(trained_bank_path, lite_db, tmp_path_factory) -> Path:
    """The trained wiki test bank, re-indexed in Milvus Lite, with the same models."""
    out = tmp_path_factory.mktemp("milvus_bank") / "bank"
    with ConceptBank.open(trained_bank_path) as source:
        copy_as_milvus_bank(source, out, lite_db, tiny_config())
    shutil.copytree(trained_bank_path / "models", out / "models")
    return out


def test_milvus_bank_records_its_backend_and_searches_like_faiss(milvus_trained_bank, trained_bank_path):
    with ConceptBank.open(milvus_trained_bank) as milvus, ConceptBank.open(trained_bank_path) as faiss_bank:
        assert milvus.manifest["backend"] == "milvus" and faiss_bank.manifest["backend"] == "faiss"
        assert milvus.manifest["index"]["rows"] == len(milvus) == len(faiss_bank)
        assert milvus.manifest["index"]["factory"] == "FLAT"  # ~1,100 concepts: `auto` is exact search
        assert milvus.manifest["checksums"].keys() == {"vectors.npy", "metadata.sqlite"}
        assert milvus.documents().keys() == faiss_bank.documents().keys()
        queries = faiss_bank.vectors(np.arange(0, len(faiss_bank), 37))
        for domain in (None, *sorted(d for d in faiss_bank.domains() if d is not None)[:3]):
            ids_m, scores_m = milvus.search(queries, 20, domain=domain)
            ids_f, scores_f = faiss_bank.search(queries, 20, domain=domain)
            np.testing.assert_allclose(scores_m, scores_f, atol=1e-4)
            # Same concepts wherever scores do not tie (the bank's float16 vectors do tie sometimes).
            for row in range(len(queries)):
                clear = scores_f[row] > scores_f[row, -1] + 1e-4
                assert set(ids_m[row][clear]) == set(ids_f[row][clear])
            if domain is not None:
                assert {c.domain for c in milvus.concepts(ids_m.ravel())} == {domain}


def test_generation_pipeline_runs_unchanged_on_a_milvus_bank(milvus_trained_bank, trained_bank_path):
    from dualpath.pipeline.generator import Generator

    cfg = tiny_config()
    on_milvus = Generator.from_bank(milvus_trained_bank, cfg)
    on_faiss = Generator.from_bank(trained_bank_path, cfg)
    try:
        for lane in ("conservative", "neutral", "creative", "legal"):
            steps_m = list(on_milvus.generate(PROMPT, steps=4, lane=lane))
            steps_f = list(on_faiss.generate(PROMPT, steps=4, lane=lane))
            assert len(steps_m) == 4
            for m, f in zip(steps_m, steps_f, strict=True):
                assert m.record.fallback_reason is None  # retrieval answered, in time
                assert m.record.decision == f.record.decision
                assert m.record.neighbour_id == f.record.neighbour_id
                assert m.record.c_max == pytest.approx(f.record.c_max, abs=1e-4)
                assert m.text == f.text
                np.testing.assert_allclose(m.vector, f.vector, atol=1e-4)
    finally:
        for generator in (on_milvus, on_faiss):
            generator.close()
            generator.bank.close()


def test_add_appends_to_the_collection_and_an_interrupted_add_leaves_the_bank_as_it_was(
    wiki_bank, text_encoder, lite_db, tmp_path, monkeypatch
):
    from conftest import wiki_documents

    path = copy_as_milvus_bank(wiki_bank, tmp_path / "bank", lite_db)
    before = len(wiki_bank)
    new_docs = [d for d in wiki_documents(330) if d.id not in wiki_bank.documents()][:6]

    # Killed after the vectors went in but before they were flushed: no manifest claims them.
    def killed(self, directory):
        raise KeyboardInterrupt("simulated kill before flush")

    closed: list[MilvusBackend] = []
    close = MilvusBackend.close

    def recording_close(self):
        closed.append(self)
        close(self)

    with ConceptBank.open(path, encoder=text_encoder) as bank, monkeypatch.context() as patch:
        patch.setattr(MilvusBackend, "save", killed)
        patch.setattr(MilvusBackend, "close", recording_close)
        with pytest.raises(KeyboardInterrupt):
            bank.add(new_docs)
        # The add's own connection was released (a leaked Lite client keeps its server running).
        assert len(closed) == 1 and closed[0] is not bank._backend and closed[0].connection.client is None
    with ConceptBank.open(path, encoder=text_encoder) as bank:
        assert len(bank) == before
        new_vectors = text_encoder.encode([new_docs[0].text.split(". ")[0]])
        ids, _ = bank.search(new_vectors, 50)
        assert ids.max() < before  # the orphaned rows are never returned
        added = bank.add(new_docs)  # the retry completes the append
        assert added > 0 and len(bank) == before + added
    with ConceptBank.open(path, encoder=text_encoder) as bank:
        assert len(bank) == before + added
        last = bank.vectors([before + added - 1])
        assert bank.search(last, 1)[0][0, 0] == before + added - 1


def test_opening_detects_a_collection_that_lost_vectors(wiki_bank, lite_db, tmp_path):
    path = copy_as_milvus_bank(wiki_bank, tmp_path / "bank", lite_db)
    with ConceptBank.open(path) as bank:
        collection = bank.manifest["index"]["collection"]
    backend = MilvusBackend.load(path, wiki_bank.dim, milvus_config(lite_db).bank, bank.manifest["index"])
    backend.connection.client.delete(collection, ids=[0, 1, 2])
    backend.close()
    with pytest.raises(BankError, match=rf"misaligned: Milvus collection {collection} .* holds {len(wiki_bank) - 3} "):
        ConceptBank.open(path)


def test_a_moved_lite_database_is_found_with_milvus_uri(wiki_bank, lite_db, tmp_path):
    path = copy_as_milvus_bank(wiki_bank, tmp_path / "bank", tmp_path / "first.db")
    shutil.move(tmp_path / "first.db", tmp_path / "moved.db")
    with pytest.raises(BankError, match=r"Milvus Lite database .*first\.db not found"):
        ConceptBank.open(path)
    with ConceptBank.open(path, milvus_config(tmp_path / "moved.db")) as bank:
        assert len(bank) == len(wiki_bank)


def test_cli_builds_opens_and_searches_a_milvus_bank(tmp_path, capsys):
    from test_bank_cli import run_cli, write_wiki_jsonl

    corpus = write_wiki_jsonl(tmp_path / "wiki.jsonl", 12)
    bank_dir, db = tmp_path / "bank", tmp_path / "lite" / "concepts.db"
    build = ["bank", "build", str(corpus), "--out", str(bank_dir), "--backend", "milvus", "--milvus-uri", str(db)]
    code, out, err = run_cli(capsys, *build, "--json")
    assert code == 0, err
    built = json.loads(out)
    assert built["backend"] == "milvus" and built["index"] == "FLAT" and built["concepts"] > 30

    # Another process opens it (this one released the embedded Milvus) and prints nothing but the result.
    info = [sys.executable, "-m", "dualpath.cli.main", "--quiet", "bank", "info", str(bank_dir), "--json"]
    done = subprocess.run(info, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    manifest = json.loads(done.stdout)["manifest"]
    assert manifest["index"]["uri"] == str(db) and manifest["index"]["rows"] == built["concepts"]

    with ConceptBank.open(bank_dir) as bank:
        text, domain = bank.texts([7])[0], bank.concepts([7])[0].domain
    code, out, _ = run_cli(capsys, "bank", "search", str(bank_dir), text, "-k", "3", "--domain", domain, "--json")
    results = json.loads(out)["results"]
    assert code == 0 and results[0]["text"] == text and results[0]["score"] > 0.99
    assert {r["domain"] for r in results} == {domain}

    # A moved database: the recorded path fails in one line; --milvus-uri finds it.
    db.rename(tmp_path / "moved.db")
    code, _, err = run_cli(capsys, "bank", "info", str(bank_dir))
    assert code == 2 and "Traceback" not in err and "not found" in err.strip().splitlines()[-1]
    code, out, _ = run_cli(capsys, "bank", "info", str(bank_dir), "--json", "--milvus-uri", str(tmp_path / "moved.db"))
    assert code == 0 and json.loads(out)["concepts"] == built["concepts"]


def test_a_second_process_on_one_lite_database_is_refused_in_one_line(tmp_path):
    """Milvus Lite allows one process per database: the second gets one line, not milvus_lite's traceback."""
    from dualpath.bank import Concept
    from test_cli_errors import assert_one_line_error, run_dualpath

    concepts = [Concept(i, "d", i, f"concept {i}", None, "d") for i in range(8)]
    bank_dir = tmp_path / "bank"
    cfg = milvus_config(tmp_path / "lite.db")
    ConceptBank.from_vectors(bank_dir, np.eye(8, dtype=np.float32), concepts, "synthetic", cfg).close()
    with ConceptBank.open(bank_dir, cfg) as bank:  # this process holds the database
        assert len(bank) == 8
        assert_one_line_error(run_dualpath("bank", "info", str(bank_dir)), "open in another process")
