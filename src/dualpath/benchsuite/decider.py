"""Decision latency at K candidates, single stream and batched, against the bare minimum any decider does.

The baseline is one BLAS mat-vec over the K shortlist vectors and an argmax: the cosines a decision
cannot avoid. Shortlists are marked unit-norm, as the generator's bank shortlists are; one row
decides the same shortlists unmarked (K norms recomputed per step) to show what that costs.
Shortlists are random unit vectors with one neighbour per stream planted at a cosine
spread over the lane's range, so SNAP, BLEND and NOVEL all occur. The main rows cycle through many
shortlists (read from memory, as the bare mat-vec's own cost shows); the last two repeat one (in
cache, as in the generator, which decides on a shortlist it has just read). `bench/bench_decider.py` prints
these figures on their own, beside its miner measurements.
"""

from __future__ import annotations

import numpy as np

from dualpath.benchsuite.timing import stats, timings_ms
from dualpath.decider import (
    FEATURES,
    DualPathDecoder,
    Grounding,
    Shortlist,
    ShortlistBatch,
    choose_grounded,
    choose_next_vector,
    choose_next_vectors,
    load_lanes,
)
from dualpath.models.heuristics import normalize_rows

K = 500  # the shipped lanes' shortlist depth
BASELINE = "bare matvec + argmax (baseline)"
HOT_BASELINE = "bare matvec + argmax, shortlist in cache"


def bench_decisions(d: int, steps: int, batch: int, k: int = K) -> dict[str, dict[str, float]]:
    """Per-step figures over `steps` steps cycling through `batch` distinct shortlists (k × d each)."""
    rng = np.random.default_rng(d)
    lane = load_lanes()["quota-neutral"]  # the c_max rule on a shortlist; the evidence rule's decision below
    grounded_lane = load_lanes()["neutral"]
    v_hat = normalize_rows(rng.normal(size=(batch, d)))
    vectors = normalize_rows(rng.normal(size=(batch, k, d)))
    # One neighbour per stream at a cosine spread over the lane's range, so all decisions occur.
    c = rng.uniform(0.5, 0.9, size=batch)[:, None]
    noise = normalize_rows(rng.normal(size=(batch, d)))
    vectors[:, 0] = normalize_rows(c * v_hat + np.sqrt(1 - c**2) * noise)
    ids = np.arange(k, dtype=np.int64)
    shortlists = [Shortlist(ids, vectors[i], unit=True) for i in range(batch)]
    unmarked = [Shortlist(ids, vectors[i]) for i in range(batch)]

    def bare(i: int) -> None:  # what any decider must do: k cosines and the best
        j = i % batch
        int(np.argmax(vectors[j] @ v_hat[j]))

    def single(i: int) -> None:
        choose_next_vector(v_hat[i % batch], shortlists[i % batch], lane)

    def single_unmarked(i: int) -> None:
        choose_next_vector(v_hat[i % batch], unmarked[i % batch], lane)

    decoder = DualPathDecoder(lane)

    def stateful(i: int) -> None:
        decoder.step(v_hat[i % batch], shortlists[i % batch])

    all_streams = ShortlistBatch(np.tile(ids, (batch, 1)), vectors, (None,) * batch, unit=True)

    # The generator decides on a shortlist it has just read, so in cache; the rows above cycle through
    # `batch` shortlists (batch × 768 KB at K 500), read from memory each time.
    def bare_hot(i: int) -> None:
        int(np.argmax(vectors[0] @ v_hat[0]))

    def single_hot(i: int) -> None:
        choose_next_vector(v_hat[0], shortlists[0], lane)

    def batched(i: int) -> None:
        choose_next_vectors(v_hat, all_streams, lane)

    # The evidence rule decides on one chosen candidate per stream (its p computed beforehand).
    p = rng.uniform(size=batch)
    grounding = Grounding(np.arange(batch, dtype=np.int64), np.ascontiguousarray(vectors[:, 0]), p,
                          np.full(batch, 3, np.int8), np.zeros((batch, len(FEATURES))))
    one = [Grounding(*(np.asarray(a)[[i]] for a in (grounding.ids, grounding.vectors, p, grounding.sources,
                                                  grounding.features))) for i in range(batch)]

    def grounded_single(i: int) -> None:
        choose_grounded(v_hat[[i % batch]], one[i % batch], grounded_lane)

    return {
        BASELINE: stats(timings_ms(bare, steps)),
        "choose_next_vector": stats(timings_ms(single, steps)),
        "choose_next_vector, shortlist not marked unit-norm": stats(timings_ms(single_unmarked, steps)),
        "DualPathDecoder.step": stats(timings_ms(stateful, steps)),
        f"choose_next_vectors, batch {batch}": stats(
            timings_ms(batched, max(5, steps // batch), warmup=1), per_call=batch
        ),
        HOT_BASELINE: stats(timings_ms(bare_hot, steps)),
        "choose_next_vector, shortlist in cache": stats(timings_ms(single_hot, steps)),
        "choose_grounded (evidence rule, the candidate given)": stats(timings_ms(grounded_single, steps)),
    }
