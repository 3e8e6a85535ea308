"""The dual-path decision, its batched form, the blend schedules and the stateful decoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dualpath.config import DeciderConfig
from dualpath.decider import (
    Decision,
    DecisionRecord,
    DualPathDecoder,
    Lane,
    Sampling,
    Shortlist,
    ShortlistBatch,
    avoid_rows,
    best_first,
    choose_next_vector,
    choose_next_vectors,
    continuous_alpha,
    get_schedule,
    id_member,
    id_rows,
    load_lanes,
    make_lane,
    nearest_unsaid,
    reference_alpha,
    shortlist_scores,
    used_rows,
)
from dualpath.errors import ConfigError, DeciderError, DualPathError

# The c_max rule's mechanics, on quota lanes with the thresholds and shares the c_max lanes ship with for
# MiniLM (quota-neutral; conservative, legal and creative as they were before they grounded on evidence).
_QUOTA = {
    "conservative": {"tau_snap": 0.73, "tau_novel": 0.65, "shares": {"snap": 0.30, "blend": 0.50, "novel": 0.20}},
    "legal": {"tau_snap": 0.73, "tau_novel": 0.65, "dup_window": 0, "repeat_window": 8,
              "shares": {"snap": 0.30, "blend": 0.50, "novel": 0.20}},
    "neutral": {"tau_snap": 0.76, "tau_novel": 0.68, "shares": {"snap": 0.15, "blend": 0.50, "novel": 0.35}},
    "creative": {"tau_snap": 0.80, "tau_novel": 0.72, "k": 300,
                 "shares": {"snap": 0.05, "blend": 0.35, "novel": 0.60}},
}
LANES = {**load_lanes(), **{name: make_lane(name, fields) for name, fields in _QUOTA.items()}}
NEUTRAL = LANES["neutral"]
RANK = {Decision.NOVEL: 0, Decision.BLEND: 1, Decision.SNAP: 2}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def at_cosine(v: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose cosine to the unit vector v is c (to float32 precision)."""
    w = rng.normal(size=v.shape)
    w -= (w @ v) * v
    w /= np.linalg.norm(w)
    return (c * v + np.sqrt(max(0.0, 1.0 - c * c)) * w).astype(np.float32)


def shortlist_with_best(v: np.ndarray, c: float, rng: np.random.Generator, k: int = 20) -> Shortlist:
    """k neighbours of v, the best (id 100 + its row) at cosine c and the rest well below it."""
    rows = [at_cosine(v, min(c, 0.0) - 0.2 * rng.random(), rng) for _ in range(k)]
    best = int(rng.integers(k))
    rows[best] = at_cosine(v, c, rng)
    return Shortlist(np.arange(100, 100 + k, dtype=np.int64), np.stack(rows))


def lane(tau_snap: float, tau_novel: float, dup_window: int = 8) -> Lane:
    return Lane(name="test", tau_snap=tau_snap, tau_novel=tau_novel, dup_window=dup_window)


# ---- the rules at each threshold ---------------------------------------------------------------


def test_exactly_at_each_threshold() -> None:
    rng = np.random.default_rng(0)
    v = unit(rng.normal(size=32))
    shortlist = shortlist_with_best(v, 0.8, rng)
    c = choose_next_vector(v, shortlist, lane(0.9, 0.5))[1].c_max
    assert c == pytest.approx(0.8, abs=1e-6)

    # c == τ_snap snaps; the next float above it does not.
    assert choose_next_vector(v, shortlist, lane(c, 0.5))[1].decision is Decision.SNAP
    assert choose_next_vector(v, shortlist, lane(np.nextafter(c, 2), 0.5))[1].decision is Decision.BLEND
    # c == τ_novel stays NOVEL; the next float below it blends.
    assert choose_next_vector(v, shortlist, lane(0.9, c))[1].decision is Decision.NOVEL
    assert choose_next_vector(v, shortlist, lane(0.9, np.nextafter(c, -2)))[1].decision is Decision.BLEND


def test_snap_outputs_the_bank_vector_bit_for_bit() -> None:
    # Basis vectors have a float32 norm of exactly 1, so nothing may perturb them on the way out.
    d = 16
    vectors = np.eye(d, dtype=np.float32)[:5]
    v = unit(np.eye(d)[2] + 0.05 * np.eye(d)[7])
    out, record = choose_next_vector(v, Shortlist(np.arange(5), vectors), NEUTRAL)
    assert record.decision is Decision.SNAP and record.neighbour_id == 2 and record.alpha == 1.0
    assert np.array_equal(out, vectors[2])


def test_record_fields_and_json() -> None:
    rng = np.random.default_rng(1)
    v = unit(rng.normal(size=24))
    _, record = choose_next_vector(v, shortlist_with_best(v, 0.72, rng), NEUTRAL)
    assert record.decision is Decision.BLEND
    assert 0.0 < record.alpha < 1.0
    assert record.lane == "neutral" and record.fallback_reason is None and not record.near_dup
    assert record.latency_ms > 0
    data = json.loads(json.dumps(record.to_dict()))
    assert data["decision"] == "BLEND" and data["neighbour_id"] == record.neighbour_id
    assert type(record).from_dict(data) == record


# ---- fallbacks: retrieval never blocks a step --------------------------------------------------


@pytest.mark.parametrize(
    ("shortlist", "reason"),
    [
        (Shortlist.failed("timeout", 8), "timeout"),
        (Shortlist.failed("error: index exploded", 8), "error: index exploded"),
        (Shortlist(np.zeros(0, np.int64), np.zeros((0, 8), np.float32)), "empty"),
        (Shortlist(np.full(3, -1), np.zeros((3, 8), np.float32)), "empty"),
        # A failed shortlist is NOVEL whatever it holds (even a perfect match).
        (Shortlist(np.arange(1), np.ones((1, 8), np.float32), fallback="timeout"), "timeout"),
    ],
)
def test_fallback_is_novel_with_its_reason(shortlist: Shortlist, reason: str) -> None:
    v = np.ones(8, np.float32) * 3.0
    out, record = choose_next_vector(v, shortlist, NEUTRAL)
    assert record.decision is Decision.NOVEL and record.fallback_reason == reason
    assert record.c_max is None and record.neighbour_id is None and record.picked_id == -1
    assert np.allclose(out, unit(v), atol=1e-7)


def test_padding_rows_are_ignored_even_if_garbage() -> None:
    rng = np.random.default_rng(2)
    v = unit(rng.normal(size=8))
    vectors = np.stack([at_cosine(v, 0.5, rng), np.full(8, np.nan, np.float32), np.zeros(8, np.float32)])
    _, record = choose_next_vector(v, Shortlist(np.array([4, -1, -1]), vectors), NEUTRAL)
    assert record.neighbour_id == 4 and record.c_max == pytest.approx(0.5, abs=1e-6)


# ---- input validation --------------------------------------------------------------------------


def _good() -> tuple[np.ndarray, Shortlist]:
    rng = np.random.default_rng(3)
    return unit(rng.normal(size=8)), Shortlist(np.arange(4), unit(rng.normal(size=(4, 8))))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong_dim", "shape"),
        ("v_nan", "NaN"),
        ("v_inf", "NaN/inf"),
        ("v_zero", "zero"),
        ("v_2d", "1-d"),
        ("v_int", "floating"),
        ("row_nan", "vector 1"),
        ("row_zero", "vector 2"),
        ("ids_mismatch", "shape"),
        ("ids_bad", "-1"),
        ("ids_float", "integer"),
    ],
)
def test_bad_input_is_a_clear_error(case: str, message: str) -> None:
    v, s = _good()
    vectors, ids = s.vectors.copy(), s.ids.copy()
    if case == "wrong_dim":
        v = np.ones(9, np.float32)
    elif case == "v_nan":
        v = v.copy()
        v[0] = np.nan
    elif case == "v_inf":
        v = v.copy()
        v[0] = np.inf
    elif case == "v_zero":
        v = np.zeros(8, np.float32)
    elif case == "v_2d":
        v = v[None, :]
    elif case == "v_int":
        v = np.ones(8, np.int64)
    elif case == "row_nan":
        vectors[1, 3] = np.nan
    elif case == "row_zero":
        vectors[2] = 0.0
    elif case == "ids_mismatch":
        ids = np.arange(5)
    elif case == "ids_bad":
        ids = np.array([0, 1, -2, 3])
    elif case == "ids_float":
        ids = ids.astype(np.float64)
    with pytest.raises(DeciderError, match=message) as info:
        choose_next_vector(v, Shortlist(ids, vectors), NEUTRAL)
    assert isinstance(info.value, ValueError) and isinstance(info.value, DualPathError)
    assert "\n" not in str(info.value)


def test_batched_shape_errors() -> None:
    v, s = _good()
    batch = ShortlistBatch.stack([s, s], dim=8)
    with pytest.raises(DeciderError, match=r"\(3, 4, 8\)"):
        three = ShortlistBatch(np.stack([s.ids] * 3), batch.vectors, (None,) * 3)
        choose_next_vectors(np.stack([v, v, v]), three, NEUTRAL)
    with pytest.raises(DeciderError, match="memory"):
        choose_next_vectors(np.stack([v, v]), batch, NEUTRAL, recent_ids=[()])
    with pytest.raises(DeciderError, match="fallback"):
        choose_next_vectors(np.stack([v, v]), ShortlistBatch(batch.ids, batch.vectors, (None,)), NEUTRAL)


# ---- properties --------------------------------------------------------------------------------

# (τ_snap, τ_novel) with a band of at least 0.005 (or down to -1).
thresholds = st.tuples(st.floats(-0.9, 0.99), st.floats(0.005, 0.5)).map(
    lambda t: (t[0], max(-1.0, t[0] - t[1]))
)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    c=st.floats(-1.0, 1.0),
    taus=thresholds,
    schedule=st.sampled_from(["continuous", "reference"]),
    scale=st.floats(1e-3, 1e3),
)
def test_decision_properties(
    seed: int, c: float, taus: tuple[float, float], schedule: str, scale: float
) -> None:
    rng = np.random.default_rng(seed)
    d = int(rng.integers(2, 40))
    v = unit(rng.normal(size=d))
    shortlist = shortlist_with_best(v, c, rng, k=int(rng.integers(1, 10)))
    # Inputs of any length are normalised first: scaling v̂ or the shortlist changes nothing but rounding.
    scaled = Shortlist(shortlist.ids, shortlist.vectors * np.float32(scale))
    out, record = choose_next_vector(v * np.float32(scale), scaled, lane(*taus), schedule=schedule)

    assert out.dtype == np.float32 and out.shape == (d,)
    assert abs(float(np.linalg.norm(out)) - 1.0) < 1e-5
    j = int(np.flatnonzero(shortlist.ids == record.neighbour_id)[0])
    n_star = unit(shortlist.vectors[j].astype(np.float64))
    if record.decision is Decision.SNAP:
        assert np.allclose(out, n_star, atol=1e-6)
    elif record.decision is Decision.NOVEL:
        assert np.allclose(out, v, atol=1e-6)
    else:
        assert record.decision is Decision.BLEND
        cos_v, cos_out = float(v @ n_star), float(out @ n_star)
        assert cos_v - 1e-5 <= cos_out <= 1.0 + 1e-5


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), c1=st.floats(-1.0, 1.0), c2=st.floats(-1.0, 1.0), taus=thresholds)
def test_decision_is_monotone_in_c(seed: int, c1: float, c2: float, taus: tuple[float, float]) -> None:
    rng = np.random.default_rng(seed)
    v = unit(rng.normal(size=16))
    low, high = sorted([c1, c2])
    r_low = choose_next_vector(v, shortlist_with_best(v, low, rng), lane(*taus))[1]
    r_high = choose_next_vector(v, shortlist_with_best(v, high, rng), lane(*taus))[1]
    if r_low.c_max <= r_high.c_max:  # the constructed cosines are exact only to float32 precision
        assert RANK[r_low.decision] <= RANK[r_high.decision]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    b=st.integers(1, 9),
    k=st.integers(0, 12),
    d=st.integers(1, 48),
    schedule=st.sampled_from(["continuous", "reference"]),
)
def test_batched_equals_single_step_bit_for_bit(seed: int, b: int, k: int, d: int, schedule: str) -> None:
    rng = np.random.default_rng(seed)
    v_hat = rng.normal(size=(b, d)).astype(np.float32) * rng.uniform(0.1, 10, size=(b, 1)).astype(np.float32)
    # A bank's shortlists (unit-norm rows, mostly full, as a generation step reads them), or any rows.
    bank_rows = rng.random() < 0.4
    shortlists, memories = [], []
    for i in range(b):
        k_i = int(rng.integers(0, k + 1))
        ids = rng.choice(50, size=k_i, replace=False).astype(np.int64)
        ids[rng.random(k_i) < (0.05 if bank_rows else 0.2)] = -1
        vectors = rng.normal(size=(k_i, d)).astype(np.float32)
        if k_i and rng.random() < 0.5:  # a near-exact match, to reach SNAP and the dup guard
            vectors[0] = v_hat[i] + 1e-3 * rng.normal(size=d).astype(np.float32)
        if bank_rows:
            vectors = unit(vectors).astype(np.float32)
        fallback = "timeout" if rng.random() < 0.1 else None
        shortlists.append(Shortlist(ids, vectors, fallback, unit=bank_rows))
        memories.append(list(rng.choice(np.append(ids[ids >= 0], -1), size=int(rng.integers(0, 12)))))
    window = int(rng.integers(0, 10))
    test_lane = lane(float(rng.uniform(0.1, 0.9)), float(rng.uniform(-0.5, 0.05)), dup_window=window)
    used = [list(rng.choice(60, size=int(rng.integers(0, 6) if rng.random() < 0.6 else 0))) for _ in range(b)]
    for shown, s in zip(used, shortlists, strict=True):
        if bank_rows and len(s) > 1 and rng.random() < 0.5:  # a stream that showed one of its candidates
            shown.append(int(s.ids[int(rng.integers(len(s) - 1))]))
    sampling = Sampling(float(rng.choice([0.0, 0.05, 1.0])), int(rng.integers(0, 4)), float(rng.uniform(0.3, 1)))
    draws = rng.random(b)
    # What each stream said (some of it close to its candidates) and a baseline's c for some streams.
    avoid, limits = [], []
    for s in shortlists:
        said = unit(rng.normal(size=(int(rng.integers(0, 4)), d)))
        if len(said) and len(s) and rng.random() < 0.7:
            said[0] = unit(np.asarray(s.vectors[int(rng.integers(len(s)))]) + 0.1 * rng.normal(size=d))
        avoid.append(said)
        limits.append(rng.uniform(0.5, 1.0, size=len(said)))
    decide_by = np.where(rng.random(b) < 0.3, rng.uniform(-1, 1, size=b), np.nan)

    batch = ShortlistBatch.stack(shortlists, d)
    out, records = choose_next_vectors(
        v_hat, batch, test_lane, memories, schedule, used_ids=used, sampling=sampling, draws=draws,
        avoid=avoid, avoid_limits=limits, decide_by=decide_by,
    )
    stacked = avoid_rows(avoid, limits, b, d)  # the generator's form: taken as it is, same decisions
    out_stacked, records_stacked = choose_next_vectors(
        v_hat, batch, test_lane, memories, schedule, used_ids=used, sampling=sampling, draws=draws,
        avoid=None if stacked is None else stacked[0], avoid_limits=None if stacked is None else stacked[1],
        decide_by=decide_by,
    )
    assert np.array_equal(out, out_stacked)
    assert [r.neighbour_id for r in records] == [r.neighbour_id for r in records_stacked]
    for i in range(b):
        single, record = choose_next_vector(
            v_hat[i], shortlists[i], test_lane, memories[i], schedule,
            used_ids=used[i], sampling=sampling, draw=float(draws[i]), avoid=avoid[i], avoid_limits=limits[i],
            decide_by=None if np.isnan(decide_by[i]) else float(decide_by[i]),
        )
        assert np.array_equal(out[i], single)
        assert record.neighbour_id is None or record.neighbour_id not in used[i]
        assert {**records[i].to_dict(), "latency_ms": 0} == {**record.to_dict(), "latency_ms": 0}


@given(seed=st.integers(0, 2**32 - 1), b=st.integers(1, 6), k=st.integers(0, 40), d=st.integers(1, 64),
       units=st.integers(1, 3))
def test_shortlist_scores_are_the_stacked_products_bit_for_bit(seed: int, b: int, k: int, d: int, units: int) -> None:
    """Scoring stream by stream (every unit while its shortlist is in cache) gives the stacked product's values."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(b, k, d)).astype(np.float32)
    against = [rng.normal(size=(b, d)).astype(np.float32) for _ in range(units)]
    scores = shortlist_scores(vectors, against)
    assert len(scores) == units
    for u, got in zip(against, scores, strict=True):
        assert got.shape == (b, k) and got.dtype == np.float32
        np.testing.assert_array_equal(got, np.matmul(vectors, u[:, :, None])[:, :, 0])


@given(seed=st.integers(0, 2**32 - 1), b=st.sampled_from([1, 2, 9, 64]), k=st.sampled_from([3, 40, 500]),
       m=st.sampled_from([0, 1, 5, 8, 9, 30, 64, 65, 200]))
@settings(max_examples=60, deadline=None)
def test_id_member_is_per_row_membership_whatever_the_method(seed: int, b: int, k: int, m: int) -> None:
    """Every size takes one of three methods (a broadcast comparison, one per column, a sort and search):
    each answers "is ids[i, j] one of used[i]", with -1 on either side matching nothing."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(-1, 60, size=(b, k)).astype(np.int64)
    used = rng.integers(-1, 60, size=(b, m)).astype(np.int64)
    expected = np.array([np.isin(ids[i], used[i][used[i] >= 0]) & (ids[i] >= 0) for i in range(b)])
    np.testing.assert_array_equal(id_member(ids, used), expected.reshape(b, k))


def test_sampling_draws_among_the_top_candidates_and_repeats_with_its_seed() -> None:
    rng = np.random.default_rng(11)
    v = unit(rng.normal(size=32))
    cosines = [0.9, 0.85, 0.8, 0.3, 0.1]
    shortlist = Shortlist(np.arange(5), np.stack([at_cosine(v, c, rng) for c in cosines]))
    wide = lane(0.5, 0.2)
    picks = {
        choose_next_vector(v, shortlist, wide, sampling=Sampling(1.0, top_k=3), draw=u)[1].neighbour_id
        for u in np.linspace(0, 0.999, 50)
    }
    assert picks == {0, 1, 2}  # top-k 3: never the 4th or 5th, and each of the three is reachable
    # top-p: the best candidate alone holds well over 30 % of the weight at a low temperature.
    low = {choose_next_vector(v, shortlist, wide, sampling=Sampling(0.01, top_p=0.3), draw=u)[1].neighbour_id
           for u in np.linspace(0, 0.999, 20)}
    assert low == {0}
    _, sampled = choose_next_vector(v, shortlist, wide, sampling=Sampling(1.0, top_k=3), draw=0.999)
    assert sampled.c_max == pytest.approx(0.9, abs=1e-5) and sampled.c_pick == pytest.approx(0.8, abs=1e-5)
    # A seeded decoder repeats its draws exactly; another seed gives another sequence.
    def run(seed: int) -> list[int]:
        decoder = DualPathDecoder(wide.model_copy(update={"repeat_window": 0}), sampling=Sampling(1.0), seed=seed)
        return [decoder.step(v, shortlist)[1].neighbour_id for _ in range(30)]
    assert run(5) == run(5) and run(5) != run(6)
    with pytest.raises(DeciderError, match="one draw"):
        choose_next_vector(v, shortlist, wide, sampling=Sampling(1.0))
    with pytest.raises(DeciderError, match="top_p"):
        Sampling(1.0, top_p=0)


# ---- schedules ---------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), taus=thresholds)
def test_default_schedule_is_continuous_at_both_boundaries(seed: int, taus: tuple[float, float]) -> None:
    tau_snap, tau_novel = taus
    rng = np.random.default_rng(seed)
    v = unit(rng.normal(size=32))
    band = tau_snap - tau_novel
    for eps in (1e-2 * band, 1e-3 * band):
        near_novel = shortlist_with_best(v, tau_novel + eps, rng, k=1)
        out, record = choose_next_vector(v, near_novel, lane(tau_snap, tau_novel))
        assert record.decision is Decision.BLEND
        # α ≈ ε / band, so the output is within ~2α of v̂ (plus float32 slack in constructing c).
        assert np.linalg.norm(out - v) <= 2.5 * eps / band + 1e-4

        near_snap = shortlist_with_best(v, tau_snap - eps, rng, k=1)
        out, record = choose_next_vector(v, near_snap, lane(tau_snap, tau_novel))
        assert record.decision is Decision.BLEND
        n_star = unit(near_snap.vectors[0])
        assert np.linalg.norm(out - n_star) <= 2.5 * eps / band + 1e-4


def test_reference_schedule_is_not_continuous() -> None:
    # Why it is not the default: just above τ_novel it already moves the output 30 % of the way.
    rng = np.random.default_rng(4)
    v = unit(rng.normal(size=32))
    reference_lane = LANES["reference-neutral"]
    just_above = shortlist_with_best(v, reference_lane.tau_novel + 1e-4, rng, k=1)
    out, record = choose_next_vector(v, just_above, reference_lane, schedule="reference")
    assert record.decision is Decision.BLEND and record.alpha == pytest.approx(0.3)
    assert np.linalg.norm(out - v) > 0.1


def test_schedule_values() -> None:
    c = np.array([0.5, 0.86, 0.885, 0.91, 0.93, 0.95, 0.99])
    assert np.allclose(reference_alpha(c, 0.9, 0.8), [0.3, 0.3, 0.5, 0.7, 0.8, 0.9, 0.9])
    a = continuous_alpha(np.array([0.6, 0.7, 0.75, 0.8, 0.9]), 0.8, 0.7)
    assert np.allclose(a, [0.0, 0.0, 0.5, 1.0, 1.0])
    grid = np.linspace(-1, 1, 401)
    for schedule in ("continuous", "reference"):
        assert np.all(np.diff(get_schedule(schedule)(grid, 0.8, 0.7)) >= 0)  # α rises with c
    with pytest.raises(ConfigError, match=r"unknown blend schedule 'cubic'.*continuous, reference"):
        get_schedule("cubic")


# ---- the lanes move the mix the intended way ---------------------------------------------------


def _mix(lane_: Lane, c_values: np.ndarray) -> dict[Decision, float]:
    rng = np.random.default_rng(5)
    d = 32
    v_hat = unit(rng.normal(size=(len(c_values), d)))
    rows = [at_cosine(v, float(c), rng) for v, c in zip(v_hat, c_values, strict=True)]
    vectors = np.stack(rows)[:, None, :]
    ids = np.arange(len(c_values))[:, None]
    _, records = choose_next_vectors(v_hat, ShortlistBatch(ids, vectors, (None,) * len(c_values)), lane_)
    counts = {dec: 0 for dec in Decision}
    for record in records:
        counts[record.decision] += 1
    return {dec: n / len(records) for dec, n in counts.items()}


def test_shipped_lanes_move_the_mix_as_intended() -> None:
    # c_max as docs/protocol.md records it for MiniLM: quantiles 5 % 0.60, 50 % 0.70, 95 % 0.80.
    c_values = np.random.default_rng(6).normal(0.70, 0.0608, size=4000).clip(-1, 1)
    mix = {name: _mix(LANES[name], c_values) for name in ("conservative", "legal", "neutral", "creative")}

    def grounded(name: str) -> float:
        return mix[name][Decision.SNAP] + mix[name][Decision.BLEND]

    for grounding in ("conservative", "legal"):
        assert grounded(grounding) > grounded("neutral") > grounded("creative")
        assert mix[grounding][Decision.SNAP] > mix["neutral"][Decision.SNAP] > mix["creative"][Decision.SNAP]
    # The uncalibrated defaults deliver their own target shares on the distribution they were set for.
    for name, m in mix.items():
        shares = LANES[name].shares
        assert m[Decision.SNAP] == pytest.approx(shares.snap, abs=0.04)
        assert m[Decision.NOVEL] == pytest.approx(shares.novel, abs=0.04)

    # The reference's numbers do the opposite of its intent, and on MiniLM leave nearly all steps NOVEL.
    ref = {name: _mix(LANES[f"reference-{name}"], c_values) for name in ("conservative", "creative")}
    assert ref["conservative"][Decision.NOVEL] > ref["creative"][Decision.NOVEL] > 0.9


# ---- the decoder: memory of picked ids, the dup window, the cap ---------------------------------


def _repeat_scenario(decoder: DualPathDecoder, gap: int) -> tuple[Decision, bool]:
    """Pick concept 7 (c = 0.99), take `gap - 1` NOVEL steps, then meet concept 7 again at c = 0.99."""
    rng = np.random.default_rng(7)
    v = unit(rng.normal(size=16))
    match = Shortlist(np.array([7]), at_cosine(v, 0.99, rng)[None, :])
    far = Shortlist(np.array([9]), at_cosine(v, 0.1, rng)[None, :])
    assert decoder.step(v, match)[1].decision is Decision.SNAP
    for _ in range(gap - 1):
        assert decoder.step(v, far)[1].decision is Decision.NOVEL
    out, record = decoder.step(v, match)
    if record.decision is Decision.NOVEL_DUP_DROP:
        assert np.allclose(out, v, atol=1e-6) and record.alpha == 0.0 and record.picked_id == -1
    return record.decision, record.near_dup


# The near-duplicate guard alone: with the no-repeat rule on, a shown concept never reaches the guard.
GUARD_ONLY = NEUTRAL.model_copy(update={"repeat_window": 0})


def test_dup_window_eight_steps_ago_drops_nine_does_not() -> None:
    assert _repeat_scenario(DualPathDecoder(GUARD_ONLY), gap=1) == (Decision.NOVEL_DUP_DROP, True)
    assert _repeat_scenario(DualPathDecoder(GUARD_ONLY), gap=8) == (Decision.NOVEL_DUP_DROP, True)
    # Nine steps ago: outside the window, still remembered (near_dup says so), so it snaps.
    assert _repeat_scenario(DualPathDecoder(GUARD_ONLY), gap=9) == (Decision.SNAP, True)


def test_a_shown_concept_is_not_shown_again_within_the_window() -> None:
    # Default lanes: the concept shown 1, 8 or 63 steps ago is out of the shortlist, so a shortlist
    # holding only it is empty (NOVEL, reason "empty") and the record counts the skip.
    for gap in (1, 8, 63):
        decision, near_dup = _repeat_scenario(DualPathDecoder(NEUTRAL), gap=gap)
        assert (decision, near_dup) == (Decision.NOVEL, False)
    decoder = DualPathDecoder(NEUTRAL)
    rng = np.random.default_rng(3)
    v = unit(rng.normal(size=16))
    first = at_cosine(v, 0.99, rng)
    second = at_cosine(v, 0.95, rng)
    both = Shortlist(np.array([7, 8]), np.stack([first, second]))
    assert decoder.step(v, both)[1].neighbour_id == 7
    _, again = decoder.step(v, both)
    assert again.neighbour_id == 8 and again.decision is Decision.SNAP and again.skipped_used == 1
    # What the step was rendered as counts too: after showing 8 instead of 7, 7 is free once more.
    decoder = DualPathDecoder(NEUTRAL)
    decoder.step(v, both)
    decoder.shown(8)
    assert decoder.step(v, both)[1].neighbour_id == 7


def test_legal_restates_a_concept_only_after_eight_others() -> None:
    legal = LANES["legal"]
    assert legal.dup_window == 0 and legal.repeat_window == 8
    for gap in (1, 8):
        assert _repeat_scenario(DualPathDecoder(legal), gap=gap) == (Decision.NOVEL, False)
    # Nine steps later it may come back, and legal's guard never drops it (dup_window 0).
    assert _repeat_scenario(DualPathDecoder(legal), gap=9) == (Decision.SNAP, True)
    # A lane with a window of 1 never shows a concept at two consecutive steps, and may at the next.
    every_other = legal.model_copy(update={"repeat_window": 1})
    assert _repeat_scenario(DualPathDecoder(every_other), gap=1) == (Decision.NOVEL, False)
    assert _repeat_scenario(DualPathDecoder(every_other), gap=2) == (Decision.SNAP, True)


def test_memory_is_capped_at_64_steps() -> None:
    wide = lane(0.73, 0.65, dup_window=64).model_copy(update={"repeat_window": 0})
    assert _repeat_scenario(DualPathDecoder(wide), gap=64) == (Decision.NOVEL_DUP_DROP, True)
    # 65 steps ago the pick has left the 64-step memory: no longer even a near-duplicate.
    assert _repeat_scenario(DualPathDecoder(wide), gap=65) == (Decision.SNAP, False)
    decoder = DualPathDecoder(NEUTRAL)
    _repeat_scenario(decoder, gap=100)
    assert len(decoder.recent_ids) == 64 and decoder.steps == 101
    with pytest.raises(ConfigError, match="dup_window"):
        DualPathDecoder(lane(0.73, 0.65, dup_window=65))


def test_blend_neighbours_count_as_picked() -> None:
    rng = np.random.default_rng(8)
    v = unit(rng.normal(size=16))
    decoder = DualPathDecoder(NEUTRAL)
    _, blend = decoder.step(v, Shortlist(np.array([3]), at_cosine(v, 0.72, rng)[None, :]))
    _, novel = decoder.step(v, Shortlist(np.array([4]), at_cosine(v, 0.1, rng)[None, :]))
    _, failed = decoder.step(v, Shortlist.failed("timeout", 16))
    decisions = [blend.decision, novel.decision, failed.decision]
    assert decisions == [Decision.BLEND, Decision.NOVEL, Decision.NOVEL]
    assert decoder.recent_ids == (3, -1, -1)
    assert [r.step for r in (blend, novel, failed)] == [0, 1, 2]


def test_decoder_reset_and_config() -> None:
    assert DualPathDecoder.from_config(DeciderConfig()).lane.name == "neutral"
    decoder = DualPathDecoder.from_config(DeciderConfig(), lane=NEUTRAL)  # the c_max rule's memory
    _repeat_scenario(decoder, gap=3)
    decoder.reset()
    assert decoder.steps == 0 and decoder.recent_ids == ()
    # After a reset the old pick is forgotten: meeting it again snaps (the scenario's first step), and
    # the stream then refuses to show it twice in a row.
    assert _repeat_scenario(decoder, gap=1) == (Decision.NOVEL, False)
    assert DualPathDecoder.from_config(DeciderConfig(schedule="reference"), lane="creative").lane.k == 300
    custom = lane(0.5, 0.4)
    assert DualPathDecoder.from_config(DeciderConfig(memory_cap=16), lane=custom).lane is custom
    with pytest.raises(ConfigError, match="unknown lane 'bold'"):
        DualPathDecoder.from_config(DeciderConfig(), lane="bold")
    with pytest.raises(ConfigError, match="unknown blend schedule"):
        DualPathDecoder.from_config(DeciderConfig(schedule="cubic"))


finite32 = st.floats(-1e3, 1e3, width=32).filter(lambda x: x == 0 or abs(x) > 1e-6)


@settings(max_examples=80, deadline=None)
@given(v=hnp.arrays(np.float32, 6, elements=finite32), n=hnp.arrays(np.float32, (3, 6), elements=finite32))
def test_any_finite_input_decides_or_names_the_zero_vector(v: np.ndarray, n: np.ndarray) -> None:
    # Hypothesis' own vectors (many zeros, wild scales), not normal samples.
    shortlist = Shortlist(np.arange(3), n)
    if not v.any() or not n.any(axis=1).all():
        with pytest.raises(DeciderError, match="zero"):
            choose_next_vector(v, shortlist, NEUTRAL)
        return
    out, _ = choose_next_vector(v, shortlist, NEUTRAL)
    assert abs(float(np.linalg.norm(out)) - 1.0) < 1e-5


def test_paraphrases_of_a_shown_concept_leave_the_shortlist_for_the_window() -> None:
    rng = np.random.default_rng(5)
    v = unit(rng.normal(size=16))
    candidates = Shortlist(np.array([7, 8, 9]), np.stack([at_cosine(v, c, rng) for c in (0.99, 0.97, 0.95)]))
    decoder = DualPathDecoder(NEUTRAL.model_copy(update={"repeat_window": 2}))
    decoder.step(v, candidates)
    decoder.shown(7, paraphrases=[8])  # 8 says what 7 said: neither may be shown next
    assert decoder.used_ids == (7, 8)
    _, record = decoder.step(v, candidates)
    assert record.neighbour_id == 9 and record.skipped_used == 2
    decoder.shown(9)
    _, record = decoder.step(v, candidates)  # 7 and 8 are still within the window of 2 steps
    assert record.neighbour_id is None and record.skipped_used == 3
    decoder.shown(-1)
    _, record = decoder.step(v, candidates)  # 7's step has left the window: 7 and 8 are free again
    assert record.neighbour_id == 7


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), windows=st.lists(st.integers(0, 5), min_size=1, max_size=6),
       steps=st.integers(0, 9))
def test_a_batch_reads_each_decoders_used_ids_as_the_decoder_does(seed: int, windows: list[int], steps: int) -> None:
    """`used_rows` is each decoder's `used_array`, as one batch's rows and as each stream's ids, whatever the
    streams' windows and memories: repeats, paraphrases and steps that showed nothing (-1) included."""
    rng = np.random.default_rng(seed)
    decoders = [DualPathDecoder(NEUTRAL.model_copy(update={"repeat_window": w, "dup_window": 0}), memory_cap=6)
                for w in windows]
    for decoder in decoders:
        for _ in range(steps):
            decoder._shown.append(tuple(int(x) for x in rng.integers(-1, 6, size=int(rng.integers(1, 4)))))
    rows, own = used_rows(decoders)
    expected = [decoder.used_array() for decoder in decoders]
    assert [ids.tolist() for ids in own] == [ids.tolist() for ids in expected]
    assert np.array_equal(rows, id_rows(expected, len(decoders), "used ids"))
    assert all(-1 not in ids for ids in own)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 30), m=st.integers(0, 6), used_n=st.integers(0, 10))
def test_greedy_n_star_is_the_best_candidate_neither_used_nor_a_paraphrase(
    seed: int, k: int, m: int, used_n: int
) -> None:
    """Passing over paraphrased picks one at a time gives the n* of removing every used id and every
    paraphrase first (brute force), and a stream whose candidates are all ruled out is NOVEL, empty."""
    rng = np.random.default_rng(seed)
    d = 8
    v = unit(rng.normal(size=d))
    vectors = unit(rng.normal(size=(k, d)) + 1.5 * v)
    ids = rng.choice(40, size=k, replace=False).astype(np.int64)
    said = unit(vectors[rng.integers(0, k, size=m)] + 0.3 * rng.normal(size=(m, d))) if m else np.zeros((0, d))
    limits = rng.uniform(0.6, 0.99, size=m)
    used = [int(x) for x in rng.choice(40, size=used_n)]
    _, record = choose_next_vector(v, Shortlist(ids, vectors), NEUTRAL, used_ids=used, avoid=said, avoid_limits=limits)
    cos = (vectors.astype(np.float64) @ v) / np.linalg.norm(vectors.astype(np.float64), axis=1)
    paraphrase = ((vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float64) @ said.T.astype(
        np.float64) >= limits).any(axis=1) if m else np.zeros(k, bool)
    allowed = ~np.isin(ids, used) & ~paraphrase
    if not allowed.any():
        assert record.neighbour_id is None and record.decision is Decision.NOVEL and record.fallback_reason == "empty"
        return
    assert record.neighbour_id == int(ids[np.flatnonzero(allowed)[np.argmax(cos[allowed])]])
    assert record.skipped_used == int(np.isin(ids, used).sum())
    assert record.skipped_paraphrases == int((paraphrase & ~np.isin(ids, used) & (cos > cos[allowed].max())).sum())


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.sampled_from([-np.inf, np.nan, -1.0, 0.0, 0.25, 0.5, 1.0, np.inf]) | st.floats(-2, 2),
                       min_size=0, max_size=30))
def test_best_first_gives_the_finite_scores_best_first_in_argmax_order(values: list[float]) -> None:
    """Every finite score once, best first and the first of equals first (argmax's order, a stable sort on
    the negated scores); no NaN or infinite one."""
    row = np.array(values, dtype=np.float32)
    given = list(best_first(row.copy())) if row.size else []
    finite = np.flatnonzero(np.isfinite(row))
    assert given == finite[np.argsort(-row[finite], kind="stable")].tolist()


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), b=st.integers(1, 5), c=st.integers(0, 40), m=st.integers(0, 4),
       ties=st.booleans())
def test_nearest_unsaid_gives_each_row_alone_what_it_gives_the_batch(
    seed: int, b: int, c: int, m: int, ties: bool
) -> None:
    """A row alone (the scalar form) and in a batch: the same pick and the same count of paraphrases passed
    over, and the pick is the best finite score whose candidate paraphrases nothing said (the first of
    equal scores)."""
    rng = np.random.default_rng(seed)
    d = 6
    vectors = unit(rng.normal(size=(b, c, d)))
    raw = rng.normal(size=(b, c)).round(1 if ties else 6)
    scores = np.where(rng.random((b, c)) < 0.8, raw, -np.inf).astype(np.float32)
    said = unit(vectors[:, rng.integers(0, max(c, 1), size=m)] + 0.2 * rng.normal(size=(b, m, d))) if c else (
        unit(rng.normal(size=(b, m, d))))
    avoided = (said.astype(np.float32), rng.uniform(0.7, 0.99, size=(b, m))) if m else None
    best, passed = nearest_unsaid(scores, vectors, avoided)
    for i in range(b):
        alone = nearest_unsaid(scores[[i]], vectors[[i]], None if avoided is None else (avoided[0][[i]],
                                                                                         avoided[1][[i]]))
        assert (int(alone[0][0]), int(alone[1][0])) == (int(best[i]), int(passed[i]))
        unit_rows = (vectors[i] / np.linalg.norm(vectors[i], axis=1, keepdims=True)).astype(np.float64)
        paraphrase = ((unit_rows @ said[i].T.astype(np.float64)) >= avoided[1][i]).any(axis=1) if m else (
            np.zeros(c, bool))
        ok = np.isfinite(scores[i]) & ~paraphrase
        assert best[i] == (int(np.flatnonzero(ok)[np.argmax(scores[i][ok])]) if ok.any() else -1)


def test_a_baseline_c_decides_but_n_star_stays_the_best_candidate() -> None:
    rng = np.random.default_rng(9)
    v = unit(rng.normal(size=16))
    shortlist = shortlist_with_best(v, 0.95, rng)  # the lane itself would SNAP
    _, own = choose_next_vector(v, shortlist, NEUTRAL)
    _, low = choose_next_vector(v, shortlist, NEUTRAL, decide_by=-1.0)
    _, mid = choose_next_vector(v, shortlist, NEUTRAL, decide_by=(NEUTRAL.tau_snap + NEUTRAL.tau_novel) / 2)
    assert own.decision is Decision.SNAP and low.decision is Decision.NOVEL and mid.decision is Decision.BLEND
    assert own.neighbour_id == low.neighbour_id == mid.neighbour_id and low.c_max == own.c_max
    assert low.c_pick == -1.0 and 0 < mid.alpha < 1


@settings(max_examples=40, deadline=None)
@given(step=st.integers(0, 100), c=st.none() | st.floats(-1, 1), decision=st.sampled_from(list(Decision)),
       n_id=st.none() | st.integers(-1, 10**6), skipped=st.integers(0, 5), confidence=st.none() | st.floats(0, 1))
def test_a_record_built_from_its_fields_is_the_dataclasss(step, c, decision, n_id, skipped, confidence) -> None:
    """The decider builds its records with DecisionRecord.from_fields (no per-field frozen setattr): the
    same record as the dataclass's constructor, defaults included, and it round-trips through to_dict."""
    values = {"step": step, "c_max": c, "decision": decision, "neighbour_id": n_id, "alpha": 0.5, "lane": "x",
              "near_dup": False, "fallback_reason": None, "latency_ms": 0.1, "skipped_paraphrases": skipped,
              "confidence": confidence}
    fast = DecisionRecord.from_fields(**values)
    assert fast == DecisionRecord(**values)
    assert vars(fast) == vars(DecisionRecord(**values))
    assert DecisionRecord.from_dict(fast.to_dict()) == fast


@settings(max_examples=150, deadline=None)
@given(rows=st.integers(1, 4), d=st.integers(1, 1100), scale=st.floats(1e-6, 1e6), zero=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_the_compiled_row_normalisation_is_numpys_bit_for_bit(rows, d, scale, zero, seed) -> None:
    """`unit_rows` / `unit_pair` (one stream's step) against numpy's `normalize_rows` and `v / _row_norms(v)`
    (the batched forms'): the same float32 bits, so a stream alone scores and decides on the vectors a batch
    would, and rendering can reuse the decision's scores (a numpy whose sum changed order would fail here)."""
    from dualpath.decider.decision import _row_norms
    from dualpath.decider.kernels import NORM_EPS, unit_pair, unit_rows
    from dualpath.models.heuristics import normalize_rows

    x = (np.random.default_rng(seed).normal(size=(rows, d)) * scale).astype(np.float32)
    if zero:
        x[0] = 0.0
    unit, norms = unit_rows(x, NORM_EPS)
    assert np.array_equal(unit, normalize_rows(x))
    assert np.array_equal(norms, _row_norms(x))
    assert np.array_equal(unit_pair(x[0], x[-1], NORM_EPS)[0], normalize_rows(x[[0, -1]]))
    with np.errstate(all="ignore"):
        assert np.array_equal(unit_rows(x)[0], x / _row_norms(x)[:, None], equal_nan=True)


@settings(max_examples=80, deadline=None)
@given(streams=st.integers(1, 6), m=st.integers(1, 5), read=st.integers(1, 5), d=st.integers(1, 40),
       seed=st.integers(0, 2**32 - 1))
def test_the_paraphrase_check_reads_its_streams_in_place(streams, m, read, d, seed) -> None:
    """`_paraphrases` on streams `rows` of a batch's avoid rows, read where they lie (also a slice of them, as
    a step reads them before its rings fill), answers as it does on those streams' rows gathered; rows
    outside the batch are a clear error, not a read past it."""
    from dualpath.decider.decision import _paraphrases

    rng = np.random.default_rng(seed)
    kept = rng.normal(size=(streams, m + 2, d))
    limits = np.where(rng.random((streams, m + 2)) < 0.2, np.inf, rng.uniform(-0.5, 0.9, (streams, m + 2)))
    avoid, bounds = kept[:, : min(read, m + 2)], limits[:, : min(read, m + 2)]  # as `Unsayable.stacked` reads
    rows = rng.integers(0, streams, size=rng.integers(1, 2 * streams + 1))
    # some picks are an avoid row itself (a paraphrase at any limit below 1), others random
    picked = np.where(rng.random((len(rows), 1)) < 0.5, avoid[rows, 0], rng.normal(size=(len(rows), d)))
    picked = picked.astype(np.float32)
    expected = _paraphrases(picked, np.ascontiguousarray(avoid[rows]), np.ascontiguousarray(bounds[rows]))
    assert (_paraphrases(picked, avoid, bounds, rows) == expected).all()
    with pytest.raises(DeciderError):
        _paraphrases(picked, avoid, bounds, np.full(len(rows), streams))
