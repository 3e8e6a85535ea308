"""Grounding on evidence: successors, candidates, the SNAP confidence, confidence lanes and their risk levels."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.decider import (
    FEATURES,
    Decision,
    DecisionRecord,
    DualPathDecoder,
    Grounding,
    SnapConfidence,
    choose_grounded,
    choose_next_vector,
    ground_streams,
    load_lanes,
    make_lane,
)
from dualpath.decider.decision import Shortlist, ShortlistBatch, id_member, id_rows, nearest_unsaid, shortlist_scores
from dualpath.decider.grounding import (
    SOURCES,
    Evidence,
    brier_score,
    choose_grounding,
    gather_candidates,
    ground_one,
    reliability,
    successor_ids,
    successor_table,
)
from dualpath.errors import ConfigError, DeciderError
from dualpath.models.heuristics import normalize_rows
from dualpath.pipeline.grounding import StreamAnchors, ground_step, lane_cosines, risk_thresholds

LANES = load_lanes()


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# ---- successors -------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 7), min_size=1, max_size=6), seed=st.integers(0, 1000))
def test_successors_are_the_concepts_j_plus_one_places_on_in_the_same_document(lengths, seed) -> None:
    ids = np.random.default_rng(seed).permutation(sum(lengths))
    documents, start = {}, 0
    for d, n in enumerate(lengths):
        documents[f"d{d}"] = ids[start : start + n]
        start += n
    table = successor_table(documents, int(sum(lengths)), reach=3)
    for doc in documents.values():
        for i, concept in enumerate(doc):
            for j in range(3):
                expected = doc[i + j + 1] if i + j + 1 < len(doc) else -1
                assert table[j, concept] == expected
    anchors = np.array([[doc[0] if len(doc) else -1, -1] for doc in documents.values()])
    found = successor_ids(table, anchors)
    assert (found[:, 1] == -1).all()
    for row, doc in zip(found, documents.values(), strict=True):
        assert row[0] == (doc[1] if len(doc) > 1 else -1)


# ---- candidates and the confidence ---------------------------------------------------------------------


def _candidates(seed: int = 0, b: int = 5, k: int = 6, d: int = 16):
    rng = np.random.default_rng(seed)
    bank = unit(rng.normal(size=(40, d)))
    ids = np.stack([rng.choice(40, size=k, replace=False) for _ in range(b)])
    q = unit(rng.normal(size=(b, d)))
    v = unit(rng.normal(size=(b, d)))
    tower = np.einsum("bkd,bd->bk", bank[ids], q)
    lvm = np.einsum("bkd,bd->bk", bank[ids], v)
    succ = np.stack([[ids[i, 2], rng.integers(0, 40)] for i in range(b)])
    anchor_cos = np.tile([1.0, 0.7], (b, 1))
    anchor_margin = np.tile([0.3, 0.12], (b, 1))
    allowed = np.ones_like(succ, dtype=bool)
    allowed[0] = False  # stream 0 has no successor
    cand = gather_candidates(ids, tower, lvm, succ, anchor_cos, anchor_margin, allowed, lambda x: bank[x], q, v)
    return cand, ids, tower, lvm


def test_candidates_carry_the_tower_and_lvm_favourites_and_flag_successors() -> None:
    cand, ids, tower, lvm = _candidates()
    f = {name: cand.features[..., i] for i, name in enumerate(FEATURES)}
    rows = np.arange(len(ids))
    assert (cand.ids[:, 0] == ids[rows, tower.argmax(axis=1)]).all()
    assert (cand.ids[:, 1] == ids[rows, lvm.argmax(axis=1)]).all()
    assert (f["tower_top"][:, 0] == 1).all() and (f["lvm_top"][:, 1] == 1).all()
    np.testing.assert_allclose(f["tower_gap"][:, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(f["lvm_gap"][:, 1], 0.0, atol=1e-6)
    assert (f["tower_gap"] <= 1e-6).all() and (f["lvm_gap"] <= 1e-6).all()
    # Stream 0's successors are refused: no id, no features. The others' exact-anchor successor is flagged.
    assert (cand.ids[0, 2:] == -1).all() and (cand.features[0, 2:] == 0).all()
    assert (f["successor"][1:, 2] == 1).all() and (f["anchor_exact"][1:, 2] == 1).all()
    assert (f["anchor_age"][1:, 3] == 1).all()
    np.testing.assert_allclose(f["anchor_cos"][1:, 3], 0.7)
    # A non-exact anchor's lead over its runner-up is evidence; an exact one's is said by its flag alone.
    np.testing.assert_allclose(f["anchor_margin"][1:, 3], 0.12)
    assert (f["anchor_margin"][1:, 2] == 0).all()
    assert (cand.sources[1:, 2] == SOURCES.index("successor")).all()


def grounding_case(seed: int, b: int, k: int, with_avoid: bool, padded: bool) -> SimpleNamespace:
    """A step of b streams to ground: a bank of 30 concepts in 6 documents, shortlists of k (padded with -1 rows
    that hold anything), failed retrievals, anchors whose successors are shortlist rows or not, decoders with
    memories of picked and shown ids, blocked ids, paraphrases to pass over, and a random confidence model."""
    rng = np.random.default_rng(seed)
    d, n = 8, 30
    bank = unit(rng.normal(size=(n, d)))
    order = rng.permutation(n)
    cuts = np.sort(rng.choice(np.arange(1, n), size=5, replace=False))
    table = successor_table({f"d{i}": doc for i, doc in enumerate(np.split(order, cuts))}, n)
    ids = np.stack([rng.choice(n, size=k, replace=False) for _ in range(b)]) if k else np.zeros((b, 0), np.int64)
    if padded and k:  # the search found fewer than k: -1 ids whose rows hold anything
        ids = np.where(rng.random((b, k)) < 0.25, -1, ids)
    vectors = np.where((ids >= 0)[..., None], bank[np.maximum(ids, 0)],
                       rng.normal(scale=1e3, size=(b, k, d))).astype(np.float32)
    fallbacks = tuple("timeout" if rng.random() < 0.1 else None for _ in range(b))
    q, v = (rng.normal(size=(b, d)) * 3).astype(np.float32), (rng.normal(size=(b, d)) * 3).astype(np.float32)
    found = []
    for i in range(b):  # each stream's prompt matches: shortlist rows (their successors may be listed) or any
        t = int(rng.integers(0, 4))
        pool = ids[i][ids[i] >= 0] if k and rng.random() < 0.6 and (ids[i] >= 0).any() else np.arange(n)
        found.append((rng.choice(pool, size=t).astype(np.int64), rng.choice([1.0, 0.999, 0.8, 0.6], size=t),
                      rng.uniform(0, 0.3, size=t)))
    anchors = StreamAnchors(found)
    successors = successor_ids(table, anchors.ids)
    lane = make_lane("x", {"rule": "confidence", "tau_snap": 0.7, "tau_novel": 0.3, "dup_window": 2,
                           "repeat_window": 12, "risk": {"snap": 0.7, "blend": 0.3}})
    decoders = [DualPathDecoder(lane) for _ in range(b)]
    for i, decoder in enumerate(decoders):  # a history: picked ids (the near-duplicate drop) and shown ones
        # short, or long enough that the stream's used ids are many (the kernels look those up sorted)
        for _ in range(int(rng.integers(0, 4) if rng.random() < 0.5 else rng.integers(8, 16))):
            picked = int(rng.choice(ids[i][ids[i] >= 0])) if k and (ids[i] >= 0).any() else int(rng.integers(n))
            decoder.remember(DecisionRecord(step=0, c_max=None, decision=Decision.SNAP, neighbour_id=picked,
                                            alpha=1.0, lane="x", near_dup=False, fallback_reason=None,
                                            latency_ms=0.0))
            decoder.shown(picked if rng.random() < 0.7 else int(rng.integers(n)),
                          rng.choice(n, size=int(rng.integers(0, 3))).tolist())
    blocked = [np.unique(np.concatenate([rng.choice(n, size=int(rng.integers(0, 3))),
                                         successors[i][rng.random(2) < 0.2]])).astype(np.int64) for i in range(b)]
    avoided = None
    if with_avoid:  # what each stream said, some of it its own candidates (paraphrases to pass over)
        said = unit(rng.normal(size=(b, 3, d))).astype(np.float64)
        said[:, 0] = bank[np.maximum(successors[:, 0], 0)]
        if k:
            said[:, 1] = bank[np.maximum(ids[:, 0], 0)]
        avoided = (said, np.where(rng.random((b, 3)) < 0.2, np.inf, 0.9))
    model = SnapConfidence(FEATURES, rng.normal(size=len(FEATURES)), rng.uniform(0.5, 2, len(FEATURES)),
                           rng.normal(size=len(FEATURES)), float(rng.normal()))
    return SimpleNamespace(bank=bank, table=table, ids=ids, vectors=vectors, fallbacks=fallbacks, q=q, v=v,
                           anchors=anchors, lane=lane, decoders=decoders, blocked=blocked, avoided=avoided, model=model,
                           used=[np.asarray(decoder.used_ids, np.int64) for decoder in decoders],
                           vectors_of=lambda x: bank[x])


CASES = dict(seed=st.integers(0, 2**32 - 1), b=st.integers(1, 6), k=st.integers(0, 9), with_avoid=st.booleans(),
             padded=st.booleans())


@settings(max_examples=100, deadline=None)
@given(**CASES)
def test_one_stream_grounds_and_decides_as_it_does_in_a_batch(
    seed: int, b: int, k: int, with_avoid: bool, padded: bool
) -> None:
    """DualPathDecoder.ground (a stream alone: its masks, candidates, features and pick by compiled loops)
    against ground_step and ground_streams on the whole batch: the same output vector, decision record and
    scores handed to rendering bit for bit, but p (and a blend's α and vector) within float rounding; with
    memories of picked and shown ids, blocked ids, failed retrievals, padded shortlists whose padding holds
    anything, anchors whose successors are shortlist rows or not, and paraphrases to pass over."""
    case = grounding_case(seed, b, k, with_avoid, padded)
    lane, decoders, ids, vectors, fallbacks, q, v = (case.lane, case.decoders, case.ids, case.vectors,
                                                     case.fallbacks, case.q, case.v)
    model, table, anchors, blocked, avoided, vectors_of = (case.model, case.table, case.anchors, case.blocked,
                                                           case.avoided, case.vectors_of)
    alone = [DualPathDecoder(lane) for _ in range(b)]
    for one, decoder in zip(alone, decoders, strict=True):  # the same history
        one._recent.extend(decoder._recent)
        one._shown.extend(decoder._shown)
        one._step = decoder._step
    scored: dict[str, np.ndarray] = {}
    grounding, c_max = ground_step(model, table, anchors, v, q, ShortlistBatch(ids, vectors, fallbacks, unit=True),
                                   case.used, blocked, avoided, vectors_of, scored)
    batch_out, batch_records = ground_streams(decoders, v, grounding, c_max, fallbacks)
    for i in range(b):
        own: dict[str, np.ndarray] = {}
        out, record = alone[i].ground(v[i], q[i], Shortlist(ids[i], vectors[i], fallbacks[i], unit=True), blocked[i],
                                      table, (anchors.ids[i], anchors.cos[i], anchors.margin[i]), model, vectors_of,
                                      None if avoided is None else (avoided[0][i], avoided[1][i]), own)
        if record.decision is Decision.BLEND:  # α is read off p (below): the blend's weights may round apart
            np.testing.assert_allclose(out, batch_out[i], atol=1e-6)
        else:
            assert np.array_equal(out, batch_out[i]), i
        mine, theirs = record.to_dict(), batch_records[i].to_dict()
        mine.pop("latency_ms"), theirs.pop("latency_ms")
        for field in ("confidence", "c_pick", "alpha"):  # p sums the same terms in another order
            np.testing.assert_allclose(mine.pop(field) or 0.0, theirs.pop(field) or 0.0, rtol=1e-12, atol=1e-15)
        assert mine == theirs, i
        assert np.array_equal(own["v"][0], scored["v"][i]) and np.array_equal(own["lvm"][0], scored["lvm"][i],
                                                                                equal_nan=True)
        assert alone[i].recent_ids == decoders[i].recent_ids


def array_form(case: SimpleNamespace) -> tuple[Grounding, np.ndarray]:
    """A step's grounding as whole-array calls over the batch (calibration's and evaluation's form:
    `gather_candidates`, `choose_grounding`, `nearest_unsaid`), with the masks that `ground_step` applies."""
    b = len(case.ids)
    q, v = normalize_rows(case.q), normalize_rows(case.v)
    allowed = case.ids >= 0
    allowed[[i for i, reason in enumerate(case.fallbacks) if reason is not None]] = False
    used = id_rows(case.used, b, "used ids")
    if used.shape[1] and case.ids.shape[1]:
        allowed &= ~id_member(case.ids, used)
    with np.errstate(all="ignore"):
        tower_raw, lvm_raw = shortlist_scores(case.vectors, (q, v))
        tower, lvm = np.where(allowed, tower_raw, -np.inf), np.where(allowed, lvm_raw, -np.inf)
    successors = successor_ids(case.table, case.anchors.ids)
    refused = id_rows([np.concatenate([x, u]) for x, u in zip(case.blocked, case.used, strict=True)], b, "ids")
    allowed_successors = successors >= 0
    if refused.shape[1]:
        allowed_successors &= ~id_member(successors, refused)
    candidates = gather_candidates(case.ids, tower, lvm, successors, case.anchors.cos, case.anchors.margin,
                                   allowed_successors, case.vectors_of, q, v, case.vectors)
    grounding = choose_grounding(candidates, case.model, pick=lambda p, rows: nearest_unsaid(p, rows, case.avoided))
    return grounding, lvm.max(axis=1, initial=-np.inf).astype(np.float64)


@settings(max_examples=100, deadline=None)
@given(**CASES)
def test_the_compiled_batch_grounds_as_the_array_form_does(
    seed: int, b: int, k: int, with_avoid: bool, padded: bool
) -> None:
    """ground_step grounds a batch by compiled loops over its streams (and reads the candidates outside their
    shortlists in one call); calibration and evaluation ground by whole-array calls. On the same step the two
    choose the same candidate, with the same vector, source, features, c_max and paraphrases passed over, and p
    within float rounding (its sum is in another order)."""
    case = grounding_case(seed, b, k, with_avoid, padded)
    compiled, c_max = ground_step(case.model, case.table, case.anchors, case.v, case.q,
                                  ShortlistBatch(case.ids, case.vectors, case.fallbacks, unit=True), case.used,
                                  case.blocked, case.avoided, case.vectors_of)
    arrays, c_max_arrays = array_form(case)
    np.testing.assert_array_equal(compiled.ids, arrays.ids)
    np.testing.assert_array_equal(compiled.sources, arrays.sources)
    np.testing.assert_array_equal(compiled.passed, arrays.passed)
    np.testing.assert_array_equal(compiled.features, arrays.features)
    np.testing.assert_array_equal(c_max, c_max_arrays)
    found = compiled.ids >= 0
    np.testing.assert_array_equal(compiled.vectors[found], arrays.vectors[found])
    np.testing.assert_allclose(compiled.confidence, arrays.confidence, rtol=1e-12, atol=1e-15)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), b=st.integers(1, 5), one=st.booleans())
def test_a_step_reads_from_the_bank_only_the_successors_its_shortlist_lacks(seed: int, b: int, one: bool) -> None:
    """One pass over each shortlist: with its rows given, a candidate that is a shortlist row (the two
    favourites, a successor listed there) takes its scores and vector from the step's pass; the bank is
    read for, and only for, the successors outside it, and their scores match the shortlist's own."""
    rng = np.random.default_rng(seed)
    d, k = 8, 7
    bank = unit(rng.normal(size=(30, d))).astype(np.float32)
    ids = np.stack([rng.choice(30, size=k, replace=False) for _ in range(b)])
    q, v = unit(rng.normal(size=(b, d))), unit(rng.normal(size=(b, d)))
    rows = bank[ids]
    tower = np.einsum("bkd,bd->bk", rows, q).astype(np.float32)
    lvm = np.einsum("bkd,bd->bk", rows, v).astype(np.float32)
    succ = np.stack([[ids[i, rng.integers(k)] if rng.random() < 0.5 else int(rng.integers(30)),
                      -1 if rng.random() < 0.3 else int(rng.integers(30))] for i in range(b)])
    read: list[int] = []

    def vectors_of(x: np.ndarray) -> np.ndarray:
        read.extend(int(i) for i in np.asarray(x).ravel())
        return bank[x]

    model = SnapConfidence(FEATURES, np.zeros(len(FEATURES)), np.ones(len(FEATURES)),
                           rng.normal(size=len(FEATURES)), 0.0)
    if one:  # a successor table that gives two anchors the successors drawn above
        table = np.full((2, 30), -1, np.int64)
        anchor_ids = rng.choice(30, size=2, replace=False)
        table[[0, 1], anchor_ids] = succ[0]
        nothing = np.zeros(0, np.int64)
        ground_one(ids[0], rows[0], tower[0], lvm[0], nothing, nothing, False, table, anchor_ids, np.ones(2),
                   np.zeros(2), vectors_of, q[:1], v[:1], model)
        expected = {int(s) for s in succ[0] if s >= 0 and s not in ids[0]}
    else:
        cand = gather_candidates(ids, tower, lvm, succ, np.ones((b, 2)), np.zeros((b, 2)), succ >= 0, vectors_of,
                                 q, v, rows)
        expected = {int(s) for i in range(b) for s in succ[i] if s >= 0 and s not in ids[i]}
        real = cand.ids >= 0
        exact = np.einsum("bmd,bd->bm", bank[np.maximum(cand.ids, 0)], q)
        np.testing.assert_allclose(cand.features[..., 0][real], exact[real], atol=1e-5)
        np.testing.assert_array_equal(cand.vectors[real], bank[cand.ids[real]])
    assert set(read) - {0} == expected - {0}
    if not expected:
        assert read == []


def test_the_confidence_learns_which_evidence_predicts_the_truth_and_round_trips() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4000, len(FEATURES)))
    truth = rng.random(4000) < 1 / (1 + np.exp(-(3 * x[:, FEATURES.index("anchor_exact")] - 1)))
    model = SnapConfidence.fit(x, truth)
    assert model.weights[FEATURES.index("anchor_exact")] > 5 * np.abs(np.delete(model.weights, FEATURES.index(
        "anchor_exact"))).max()
    p = model.predict(x)
    assert ((p >= 0) & (p <= 1)).all()
    assert brier_score(p, truth) < brier_score(np.full(len(p), truth.mean()), truth)
    curve = reliability(p, truth)
    assert sum(b["n"] for b in curve) == len(p)
    assert all(abs(b["mean_p"] - b["observed"]) < 0.1 for b in curve if b["n"] > 200)  # calibrated
    again = SnapConfidence.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_allclose(again.predict(x), p)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"features": ["x"] * len(FEATURES)}, "fitted on features"),
        ({"weights": [1.0]}, "wrong shape"),
        ({"scale": [0.0] * len(FEATURES)}, "scale"),
        ({"bias": "nan"}, "not finite"),
        ({"mean": None}, "corrupt"),
    ],
)
def test_a_corrupt_confidence_is_a_one_line_error(change, message) -> None:
    good = SnapConfidence.fit(np.random.default_rng(0).normal(size=(50, len(FEATURES))), np.arange(50) % 2)
    with pytest.raises(ConfigError, match=message) as err:
        SnapConfidence.from_dict({**good.to_dict(), **change}, "bank/calibration.json")
    assert "\n" not in str(err.value) and "dualpath calibrate" in str(err.value)


def test_the_most_probable_allowed_candidate_is_chosen() -> None:
    cand, *_ = _candidates()
    model = SnapConfidence.fit(cand.features[cand.ids >= 0], cand.features[cand.ids >= 0][:, 7] > 0)
    grounding = choose_grounding(cand, model)
    p = np.where(cand.ids >= 0, model.predict(cand.features), -np.inf)
    np.testing.assert_allclose(grounding.confidence, p.max(axis=1))
    refuse_first = choose_grounding(cand, model, pick=lambda s, _: (np.where(np.arange(len(s)) == 0, -1, s.argmax(1)),
                                                                     np.where(np.arange(len(s)) == 0, 2, 0)))
    assert refuse_first.ids[0] == -1 and refuse_first.confidence[0] == 0 and refuse_first.evidence(0) is None
    assert refuse_first.passed.tolist() == [2] + [0] * (len(refuse_first.ids) - 1)  # what the pick passed over
    assert set(refuse_first.evidence(1)) == set(FEATURES)


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=len(FEATURES),
                       max_size=len(FEATURES)))
def test_a_records_evidence_reads_as_the_dict_of_its_features(values: list[float]) -> None:
    """A grounded record's evidence (`Evidence`, a mapping over its features row) is the dict of the features by
    name wherever a record is read: by key, in order, equal to that dict either way round, in `to_dict` (to
    4 places, JSON-ready), through a pickle, and it refuses a row of the wrong length."""
    evidence = Evidence(list(values))
    as_dict = dict(zip(FEATURES, values, strict=True))
    assert list(evidence) == list(FEATURES) and len(evidence) == len(FEATURES)
    assert evidence == as_dict and as_dict == evidence and evidence["anchor_votes"] == values[-1]
    assert evidence != {**as_dict, "tower_score": values[0] + 1.0}
    with pytest.raises(KeyError):
        evidence["no such feature"]
    record = DecisionRecord.from_fields(step=0, c_max=0.5, decision=Decision.SNAP, neighbour_id=3, alpha=1.0,
                                        lane="x", near_dup=False, fallback_reason=None, latency_ms=0.0,
                                        evidence=evidence)
    written = json.loads(json.dumps(record.to_dict()))
    assert written["evidence"] == {name: round(value, 4) for name, value in as_dict.items()}
    assert pickle.loads(pickle.dumps(record)) == record
    with pytest.raises(ValueError, match="one per feature"):
        Evidence(list(values)[:-1])


# ---- the decision on a confidence lane ---------------------------------------------------------------


def _grounding(p: np.ndarray, d: int = 12, seed: int = 0) -> tuple[np.ndarray, Grounding]:
    rng = np.random.default_rng(seed)
    b = len(p)
    v = unit(rng.normal(size=(b, d)))
    n = unit(rng.normal(size=(b, d)))
    ids = np.arange(b, dtype=np.int64) + 100
    return v, Grounding(ids, n, np.asarray(p, dtype=np.float64), np.full(b, 3, np.int8), np.zeros((b, len(FEATURES))))


def test_thresholds_on_p_decide_snap_blend_and_novel() -> None:
    lane = make_lane("x", {"rule": "confidence", "tau_snap": 0.6, "tau_novel": 0.2, "risk": {"snap": 0.6}})
    v, g = _grounding(np.array([0.9, 0.6, 0.4, 0.2, 0.05]))
    out, records = choose_grounded(v, g, lane)
    assert [r.decision for r in records] == [Decision.SNAP, Decision.SNAP, Decision.BLEND, Decision.NOVEL,
                                             Decision.NOVEL]
    np.testing.assert_allclose(out[0], g.vectors[0], atol=1e-6)
    np.testing.assert_allclose(out[3], v[3], atol=1e-6)
    assert records[2].alpha == pytest.approx(0.5) and records[2].confidence == pytest.approx(0.4)
    assert records[0].candidate_source == "successor" and records[0].neighbour_id == 100
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)


def test_no_candidate_or_a_failed_retrieval_is_novel_with_its_reason() -> None:
    lane = LANES["conservative"]
    v, g = _grounding(np.array([0.99, 0.99]))
    g = Grounding(np.array([-1, 101]), g.vectors, g.confidence, g.sources, g.features)
    out, records = choose_grounded(v, g, lane, fallbacks=[None, "timeout"])
    assert [r.decision for r in records] == [Decision.NOVEL, Decision.NOVEL]
    assert [r.fallback_reason for r in records] == ["empty", "timeout"]
    np.testing.assert_allclose(out, v, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(p=st.lists(st.floats(0, 1), min_size=1, max_size=12), seed=st.integers(0, 100),
       schedule=st.sampled_from(["continuous", "reference"]))
def test_a_stream_decides_the_same_alone_or_in_a_batch(p, seed, schedule) -> None:
    """A stream alone (choose_grounded's scalar form) and in a batch: the same output bit for bit and the
    same record, with memories that repeat picks, failed retrievals, absent candidates and drawn p's."""
    v, g = _grounding(np.array(p), seed=seed)
    rng = np.random.default_rng(seed)
    b = len(p)
    ids = np.where(rng.random(b) < 0.15, -1, g.ids)
    near = rng.random(b) < 0.3  # a candidate at v̂ itself: the near-duplicate guard's cosine
    g = Grounding(ids, np.where(near[:, None], v, g.vectors), g.confidence, g.sources,
                  rng.uniform(0, 1, (b, len(FEATURES))), passed=rng.integers(0, 3, b))
    memories = [list(rng.choice([100 + i, 7, 8], size=int(rng.integers(0, 4)))) for i in range(b)]
    fallbacks = [("timeout" if rng.random() < 0.1 else None) for _ in range(b)]
    decide_by = np.where(rng.random(b) < 0.3, rng.uniform(0, 1, b), np.nan)
    c_max = np.where(rng.random(b) < 0.2, np.nan, rng.uniform(-1, 1, b))
    lane = make_lane("x", {"rule": "confidence", "tau_snap": 0.7, "tau_novel": 0.3, "dup_window": 2,
                           "risk": {"snap": 0.7, "blend": 0.3}})
    batch_out, batch_records = choose_grounded(v, g, lane, memories, schedule, c_max=c_max, fallbacks=fallbacks,
                                               decide_by=decide_by)
    for i in range(b):
        one = g.rows([i])
        out, (record,) = choose_grounded(v[[i]], one, lane, [memories[i]], schedule, c_max=c_max[[i]],
                                         fallbacks=[fallbacks[i]], decide_by=decide_by[[i]])
        assert np.array_equal(out[0], batch_out[i])
        assert {**record.to_dict(), "latency_ms": 0} == {**batch_records[i].to_dict(), "latency_ms": 0}
        assert record.skipped_paraphrases == int(g.passed[i])  # the grounding's passes reach the record


def test_a_repeat_of_a_recent_pick_is_dropped_and_the_random_mix_reads_its_own_p() -> None:
    lane = LANES["creative"]
    v, g = _grounding(np.array([0.99]))
    g = Grounding(g.ids, v.copy(), g.confidence, g.sources, g.features)  # the candidate is v̂ itself: cos 1
    _, (record,) = choose_grounded(v, g, lane, recent_ids=[[100]])
    assert record.decision is Decision.NOVEL_DUP_DROP and record.near_dup
    _, (drawn,) = choose_grounded(v, g, lane, recent_ids=[[100]], decide_by=np.array([0.1]))
    assert drawn.decision is Decision.NOVEL and drawn.c_pick == pytest.approx(0.1)


def test_the_shipped_lanes_move_the_mix_as_intended() -> None:
    # Conservative grounds most, creative least; legal grounds more than creative and never blends.
    p = np.random.default_rng(5).beta(0.6, 0.9, size=3000)
    v, g = _grounding(p)

    def mix(name: str) -> dict[Decision, float]:
        _, records = choose_grounded(v, g, LANES[name])
        return {d: float(np.mean([r.decision is d for r in records])) for d in Decision}

    m = {name: mix(name) for name in ("conservative", "neutral", "legal", "creative")}
    assert m["conservative"][Decision.SNAP] > m["neutral"][Decision.SNAP] > m["legal"][Decision.SNAP]
    assert m["legal"][Decision.SNAP] > m["creative"][Decision.SNAP] > 0
    assert m["legal"][Decision.BLEND] == 0 and m["creative"][Decision.BLEND] == 0


def test_the_c_max_rule_refuses_a_confidence_lane_and_ground_streams_refuses_a_quota_lane() -> None:
    v, g = _grounding(np.array([0.5]))
    with pytest.raises(DeciderError, match="choose_grounded"):
        choose_next_vector(v[0], Shortlist(np.array([1]), g.vectors), LANES["neutral"])
    with pytest.raises(DeciderError, match="c_max"):
        ground_streams([DualPathDecoder(LANES["quota-neutral"])], v, g)


def test_ground_streams_gives_each_decoder_its_own_memory() -> None:
    v, g = _grounding(np.array([0.99, 0.99, 0.01]))
    decoders = [DualPathDecoder(LANES[name]) for name in ("conservative", "legal", "neutral")]
    _, records = ground_streams(decoders, v, g)
    assert [r.lane for r in records] == ["conservative", "legal", "neutral"]
    assert [d.recent_ids for d in decoders] == [(100,), (101,), (-1,)]
    assert [r.step for r in records] == [0, 0, 0]


# ---- risk levels ---------------------------------------------------------------------------------------


def _parts(seed: int = 0, n: int = 800) -> dict[str, dict[str, np.ndarray]]:
    """Closed-form ingredients of three cases: the bank knows (p high, candidate right), is unsure, does not."""
    rng = np.random.default_rng(seed)

    def case(p: np.ndarray, right: np.ndarray) -> dict[str, np.ndarray]:
        a = rng.uniform(0.4, 0.7, size=len(p))
        g = np.where(right, 1.0, rng.uniform(0.1, 0.4, size=len(p)))
        return {"p": p, "a": a, "g": g, "c": rng.uniform(0.3, 0.7, size=len(p)), "exact": right}

    known_p = rng.uniform(0.8, 1.0, size=n)
    unsure_p = rng.uniform(0.0, 0.6, size=n)
    unknown_p = rng.uniform(0.0, 0.35, size=n)
    return {"added": case(known_p, rng.random(n) < known_p), "restated": case(unsure_p, rng.random(n) < unsure_p),
            "unknown": case(unknown_p, np.zeros(n, bool))}


def test_fitted_levels_ground_where_it_helps_and_keep_the_unknown_case_free() -> None:
    parts = _parts()
    helps = LANES["conservative"].risk
    tau_snap, tau_novel, score = risk_thresholds(helps, parts, slack=0.002)
    unknown = parts["unknown"]
    assert lane_cosines(unknown, tau_snap, tau_novel).mean() >= unknown["a"].mean() - 0.002
    assert np.mean(unknown["p"] > tau_novel) <= 0.02
    never = np.mean([lane_cosines(x, 1.0, np.nextafter(1.0, 0)).mean() for x in parts.values()])
    assert score > never  # grounding where the evidence is strong pays
    # A stated level stands as it is; "none" means no BLEND band.
    fixed = risk_thresholds(LANES["creative"].risk, parts, slack=0.002)
    assert fixed[0] == 0.9 and fixed[1] == pytest.approx(0.9, abs=1e-9) and fixed[1] < 0.9


def test_a_lane_states_risk_only_with_the_confidence_rule() -> None:
    with pytest.raises(ConfigError, match="risk"):
        make_lane("x", {"tau_snap": 0.5, "tau_novel": 0.2, "risk": {"snap": 0.5}})
    with pytest.raises(ConfigError, match="shares"):
        make_lane("x", {"rule": "confidence", "tau_snap": 0.5, "tau_novel": 0.2,
                        "shares": {"snap": 0.2, "blend": 0.3, "novel": 0.5}})
    with pytest.raises(ConfigError, match="probability"):
        make_lane("x", {"rule": "confidence", "tau_snap": 0.5, "tau_novel": 0.2, "risk": {"snap": 1.5}})
    with pytest.raises(ConfigError, match="below snap"):
        make_lane("x", {"rule": "confidence", "tau_snap": 0.5, "tau_novel": 0.2, "risk": {"snap": 0.5, "blend": 0.7}})


def test_a_heavier_unknown_case_lowers_p_where_the_evidence_is_ambiguous() -> None:
    """Weighting the unknown case's candidates up (its prior) lowers p for the evidence it shares with the
    restated case, and leaves evidence only one case shows where it was."""
    rng = np.random.default_rng(3)
    n = 3000
    x = rng.normal(size=(n, len(FEATURES)))
    ambiguous = x[:, FEATURES.index("anchor_cos")]
    truth = rng.random(n) < 1 / (1 + np.exp(-2 * ambiguous))
    even = SnapConfidence.fit(x, truth)
    heavy = SnapConfidence.fit(x, truth, np.where(truth, 1.0, 4.0))
    probe = np.zeros((1, len(FEATURES)))
    probe[0, FEATURES.index("anchor_cos")] = 1.0
    assert heavy.predict(probe)[0] < even.predict(probe)[0]
    with pytest.raises(ValueError, match="weights"):
        SnapConfidence.fit(x, truth, np.full(n, -1.0))


def test_a_snap_along_an_anchor_walks_past_the_anchor_and_what_lies_between() -> None:
    """The anchor a SNAP continues, and for an older anchor the concepts between, are what the stream's
    text already said: StreamAnchors.walked_past names them; a SNAP that continues no anchor names none."""
    from dualpath.pipeline.grounding import StreamAnchors

    table = successor_table({"d": np.array([10, 11, 12, 13, 14]), "e": np.array([20, 21])}, 30)
    # Three streams with no prompt concepts (no bank needed), then each stream's two newest anchors pushed.
    anchors = StreamAnchors([(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))] * 3)
    anchors.push(np.array([10, -1, 12]), np.ones(3))
    anchors.push(np.array([11, 21, -1]), np.ones(3))
    assert anchors.walked_past(0, 12, table) == [11]  # the newest anchor's next concept
    assert anchors.walked_past(2, 14, table) == [12, 13]  # the older anchor, two places on
    assert anchors.walked_past(1, 12, table) == []  # 12 continues none of stream 1's anchors
    assert anchors.walked_past(1, 22, table) == []  # past the end of its document
