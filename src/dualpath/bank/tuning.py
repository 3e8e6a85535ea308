"""Search settings chosen per depth at a stated recall: what an approximate index needs to be told.

An IVF index scans `nprobe` of its lists and an HNSW graph keeps `efSearch` candidates. Both trade time
for recall, and the recall they give falls with the depth k asked for. On the 36k-concept Wikipedia bank,
with the query tower's queries of held-out contexts, `IVF762` at nprobe 16 returns 96 % of the exact top
10 but 58 % of the exact top 500; it needs nprobe 128 for 94 %. A generation step searches K + its
excluded ids deep (K = 100-500), so one fixed setting is either slow at small k or blind at large k.

`tune_search` measures, once per index build or growth, the smallest setting of a ladder that returns
at least the stated share of the exact top-k at each of a few depths, with one-sided 95 % confidence
over its queries (the mean less 1.645 standard errors). The queries are bank vectors (their own
match left out): on that bank they gave the same recall as the tower's queries to within 0.01 at every
depth and setting measured. A search at depth k then uses the setting tuned for k, or
between two tuned depths a setting geometrically between theirs (`SearchTuning.setting`).

A search confined to a domain needs more: its k nearest lie among the k / share nearest overall, where
the index finds fewer of them at the same setting (on 30,000 clustered vectors in 12 random domains,
indexes tuned for the unfiltered top 10 returned 27-89 % of a domain's). So a bank with domains is
tuned again on its TUNED_DOMAINS narrowest domains holding at least MIN_DOMAIN_SHARE of its rows each,
with bank rows of any domain as queries and the domain's exact neighbours as the truth, keeping per
depth the setting that holds in every one (`SearchTuning.filtered`); a narrower domain's search widens
those settings in proportion to its share (`SearchTuning.setting_for`), and never searches narrower
than the unfiltered setting would (widened by the share for an HNSW beam). The FAISS backend measures
and searches a domain as its searches do: where the beam would score more rows than the domain holds,
it scans the domain's rows exactly instead.

Both backends (FAISS and Milvus) tune the same way: each supplies `search(setting, queries, k) -> ids` and
the number of lists of an IVF index; plain numpy in and out.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TUNED_DEPTHS = (10, 100, 500, 1000)
TUNING_QUERIES = 200  # recall over 200 queries: a standard error of ~0.01 at 0.95
# A setting holds when its measured recall less this many standard errors (over the queries) reaches the
# target: one-sided 95 %. The first setting whose mean passed sat just at the target, and queries the tuning
# had not seen found less (the tower's queries of held-out contexts 0.941 of their top 10 on the quick
# benchmark bank tuned to 0.95; 0.964 under this rule).
CONFIDENCE_Z = 1.645
EXACT_BLOCK = 65_536  # bank rows scored at a time for the exact neighbours (bounded memory at 1M)
MAX_EF_SEARCH = 16_384  # the widest HNSW beam a search uses (a filtered search's included; Milvus allows 32,768)
MIN_DOMAIN_SHARE = 0.01  # the narrowest domain filtered searches are tuned on (narrower ones widen its settings)
TUNED_DOMAINS = 4  # filtered searches are tuned on this many of the narrowest domains (a setting must hold in each)


@dataclass(frozen=True)
class SearchTuning:
    """The setting (`knob`: nprobe or efSearch) used at each depth, and the recall measured with it."""

    knob: str
    recall: float  # the stated target
    depths: tuple[int, ...]
    settings: tuple[int, ...]
    measured: tuple[float, ...]
    queries: int
    domain: str | None = None  # the domains these were measured within, by name (None: unfiltered searches)
    share: float = 1.0  # the narrowest of them: its share of the bank's rows
    filtered: SearchTuning | None = None  # settings measured for searches confined to a domain

    def setting_for(self, k: int, share: float) -> int:
        """The setting for a search `k` deep confined to `share` of the rows: `setting(k)`, widened in proportion
        where the share is narrower than the one it was measured on (the caller caps it at the index's limit)."""
        value = self.setting(k)
        return math.ceil(value * self.share / max(share, 1e-6) - 1e-9) if share < self.share else value

    def setting(self, k: int) -> int:
        """The setting for a search `k` deep: a tuned depth's own; between two, geometric between their
        settings (a step's K + its excluded ids lies just past a tuned K); the shallowest's and the
        deepest's outside them."""
        if k <= self.depths[0]:
            return self.settings[0]
        for i in range(1, len(self.depths)):
            d0, s0, d1, s1 = self.depths[i - 1], self.settings[i - 1], self.depths[i], self.settings[i]
            if k <= d1:
                share = math.log(k / d0) / math.log(d1 / d0)
                return min(s1, math.ceil(s0 * (s1 / s0) ** share - 1e-9))
        return self.settings[-1]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"knob": self.knob, "recall": self.recall, "depths": list(self.depths),
                               "settings": list(self.settings), "measured": list(self.measured),
                               "queries": self.queries}
        if self.domain is not None:
            out.update(domain=self.domain, share=self.share)
        if self.filtered is not None:
            out["filtered"] = self.filtered.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Any) -> SearchTuning | None:
        """The tuning a manifest recorded; None when it holds none or not in this form (then the fixed
        settings apply, as before tuning existed). A bank tuned before filtered searches were has no
        `filtered` entry: its domain searches widen the unfiltered settings, as they did then."""
        try:
            domain = data.get("domain")
            tuning = cls(str(data["knob"]), float(data["recall"]), tuple(int(x) for x in data["depths"]),
                         tuple(int(x) for x in data["settings"]), tuple(float(x) for x in data["measured"]),
                         int(data["queries"]), None if domain is None else str(domain), float(data.get("share", 1.0)),
                         cls.from_dict(data["filtered"]) if "filtered" in data else None)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        ok = len(tuning.depths) == len(tuning.settings) == len(tuning.measured) > 0 and min(tuning.settings) >= 1
        return tuning if ok and 0 < tuning.share <= 1 else None


def setting_ladder(knob: str, nlist: int = 0) -> Callable[[int], list[int]]:
    """The settings `tune_search` tries at a depth, ascending: efSearch from the depth (the beam must hold
    the k results) doubling up to MAX_EF_SEARCH; nprobe in steps of √2 up to the index's `nlist` lists (a
    setting within 1.41× of the least that holds)."""
    if knob == "efSearch":
        return lambda depth: [v for v in (depth << i for i in range(16)) if v <= MAX_EF_SEARCH] or [MAX_EF_SEARCH]
    steps = sorted({min(round(2 ** (i / 2)), nlist) for i in range(2 * nlist.bit_length() + 1)})
    return lambda depth: steps


_said: set[tuple[str, SearchTuning | None, float | None]] = set()


def recorded_tuning(
    description: dict[str, Any], recall: float | None, approximate: bool, directory: str | Path, fixed: str
) -> SearchTuning | None:
    """The settings a bank's manifest recorded for its index (`description`), with a warning where they were
    tuned to another recall than `recall` (bank.recall), or where an `approximate` index has none while a
    recall is stated: it then searches with the `fixed` settings at every depth."""
    tuned = SearchTuning.from_dict(description.get("search"))
    said = (str(directory), tuned, recall)
    if said in _said:  # once per bank and state in a process (`bank tune` opens the index twice)
        return tuned
    _said.add(said)
    if tuned is not None and recall is not None and abs(tuned.recall - recall) > 1e-9:
        log.warning("bank %s searches with settings tuned to recall %.2f, not bank.recall %.2f: "
                    "`dualpath bank tune %s` measures them again", directory, tuned.recall, recall, directory)
    if tuned is None and approximate and recall is not None:
        log.warning("bank %s has no search settings tuned to a recall (an earlier dualpath built it, or "
                    "bank.recall was null): it searches with %s at every depth, which can miss many of a deep "
                    "shortlist's neighbours; `dualpath bank tune %s` measures them", directory, fixed, directory)
    return tuned


def exact_neighbours(
    vectors: np.ndarray, query_ids: np.ndarray, k: int, members: np.ndarray | None = None
) -> np.ndarray:
    """(q, k) ids of each query row's k nearest other rows by inner product, best first, in float32; among
    the rows `members` (sorted ids) only, where given."""
    queries = np.asarray(vectors[query_ids], dtype=np.float32)
    n = len(vectors) if members is None else len(members)
    best_ids = np.full((len(queries), 0), -1, np.int64)
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    for start in range(0, n, EXACT_BLOCK):
        if members is None:
            ids = np.arange(start, min(start + EXACT_BLOCK, n), dtype=np.int64)
            block = np.asarray(vectors[start : start + EXACT_BLOCK], dtype=np.float32)
        else:
            ids = members[start : start + EXACT_BLOCK]
            block = np.asarray(vectors[ids], dtype=np.float32)
        scores = queries @ block.T
        scores[ids[None, :] == query_ids[:, None]] = -np.inf  # a query is not its own neighbour
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_ids = np.concatenate([best_ids, np.broadcast_to(ids, scores.shape)], axis=1)
        keep = min(k, all_scores.shape[1])
        top = np.argpartition(-all_scores, keep - 1, axis=1)[:, :keep]
        best_scores = np.take_along_axis(all_scores, top, axis=1)
        best_ids = np.take_along_axis(all_ids, top, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, axis=1)


def recall_per_query(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(q,) the share of each query's true top-k (`truth`, k columns) that the search returned among its
    first k results (`found`; -1 padding finds nothing)."""
    k = truth.shape[1]
    return np.array([np.intersect1d(f[f >= 0], t).size / k for f, t in zip(found[:, :k], truth, strict=True)])


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """The mean of `recall_per_query`: 0 for no queries."""
    hits = recall_per_query(found, truth)
    return float(hits.mean()) if hits.size else 0.0


def recall_lower_bound(hits: np.ndarray, z: float = CONFIDENCE_Z) -> float:
    """The mean recall of per-query `hits` less `z` standard errors of that mean (0 for no queries)."""
    if not hits.size:
        return 0.0
    spread = float(hits.std(ddof=1)) if hits.size > 1 else 0.0
    return float(hits.mean()) - z * spread / math.sqrt(hits.size)


def tune_search(
    search: Callable[[int, np.ndarray, int], np.ndarray],
    vectors: np.ndarray,
    ladder: Callable[[int], Sequence[int]],
    knob: str,
    target: float,
    depths: Sequence[int] = TUNED_DEPTHS,
    queries: int = TUNING_QUERIES,
    seed: int = 0,
    members: np.ndarray | None = None,
) -> SearchTuning | None:
    """At each depth k the bank can fill, the smallest of `ladder(k)` (ascending settings) whose search
    returns ≥ `target` of the exact top-k, with one-sided 95 % confidence over the queries (`recall_lower_bound`),
    and never less than the shallower depth's; the ladder's last where none does (logged). `measured` records
    each chosen setting's mean recall. None for a bank too small to tune (fewer vectors than the shallowest
    depth + 2). `members` (sorted ids), where given, are the rows of the domain `search` confines itself
    to: the truth is their exact top-k, and the queries are drawn from every row. (Drawn from the domain's
    own rows, they found its neighbours at a narrower beam than held-out queries needed: on 6,000 vectors in
    12 random domains, a Milvus Lite HNSW bank measured 0.96 at ef 10 where held-out queries got 0.89.)"""
    pool = np.arange(len(vectors), dtype=np.int64) if members is None else np.asarray(members, np.int64)
    n = len(pool)
    depths = [d for d in depths if d + 1 < n]
    if not depths:
        return None
    rng = np.random.default_rng(seed)
    if members is None:
        query_ids = pool[rng.choice(n, size=min(queries, n), replace=False)]
    else:  # queries from anywhere, most outside the domain: a user's text is not always about the domain
        query_ids = rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False).astype(np.int64)
    truth = exact_neighbours(vectors, query_ids, max(depths), None if members is None else pool)
    q = np.asarray(vectors[query_ids], dtype=np.float32)
    settings: list[int] = []
    measured: list[float] = []
    for depth in depths:
        values = [v for v in ladder(depth) if not settings or v >= settings[-1]] or [settings[-1]]
        for value in values:
            found = search(value, q, depth + 1)
            found = np.stack([np.concatenate([row[row != own], [-1]])[:depth] for row, own in zip(
                found, query_ids, strict=True)])  # its own match left out, as in the truth
            hits = recall_per_query(found, truth[:, :depth])
            got, surely = float(hits.mean()), recall_lower_bound(hits)
            if surely >= target:
                break
        if surely < target:
            log.warning("%s %d reaches recall %.3f at depth %d, not surely the stated %.2f: searches that deep "
                        "may miss more than stated", knob, value, got, depth, target)
        settings.append(int(value))
        measured.append(round(got, 4))
    tuning = SearchTuning(knob, float(target), tuple(depths), tuple(settings), tuple(measured), len(query_ids))
    log.info("search%s tuned to recall %.2f: %s", "" if members is None else " within a domain", target, ", ".join(
        f"k ≤ {d}: {knob} {s} ({r:.3f})" for d, s, r in zip(depths, settings, measured, strict=True)))
    return tuning


def tuned_domains(domains: Sequence[str | None] | None) -> list[tuple[str, np.ndarray]]:
    """The domains filtered searches are tuned on, and their rows (sorted ids), from each row's domain (None:
    none): the TUNED_DOMAINS narrowest that hold at least MIN_DOMAIN_SHARE of the rows and more than the
    shallowest tuned depth + 1 (by name among equals); where none holds that share, the widest that hold
    more than that depth + 1 (narrower domains widen their settings)."""
    if not domains:
        return []
    labels = np.asarray([d if d is not None else "" for d in domains], dtype=object)
    named = labels != ""
    if not named.any():
        return []
    names, inverse, counts = np.unique(labels[named], return_inverse=True, return_counts=True)
    fit = np.flatnonzero(counts >= max(MIN_DOMAIN_SHARE * len(labels), TUNED_DEPTHS[0] + 2))
    order = fit[np.argsort(counts[fit], kind="stable")]
    if not fit.size:
        fit = np.flatnonzero(counts >= TUNED_DEPTHS[0] + 2)
        order = fit[np.argsort(-counts[fit], kind="stable")]
    rows = np.flatnonzero(named)
    return [(str(names[j]), rows[inverse == j].astype(np.int64)) for j in order[:TUNED_DOMAINS]]


def tune_with_domains(
    search: Callable[[int, np.ndarray, int], np.ndarray],
    search_in: Callable[[str], Callable[[int, np.ndarray, int], np.ndarray]],
    vectors: np.ndarray,
    domains: Sequence[str | None] | None,
    ladder: Callable[[int], Sequence[int]],
    knob: str,
    target: float,
) -> SearchTuning | None:
    """`tune_search` for unfiltered searches (`search`), and where the bank has domains to tune on
    (`tuned_domains`), on each for searches confined to it (`search_in(domain)`, its share of the queries):
    per depth the largest of their settings, the least of their recalls, at the narrowest one's share, kept
    as the unfiltered tuning's `filtered`."""
    tuning = tune_search(search, vectors, ladder, knob, target)
    chosen = tuned_domains(domains)
    if tuning is None or not chosen:
        return tuning
    queries = max(TUNING_QUERIES // len(chosen), 20)
    # (domain, its rows, its tuning): tuned_domains chose domains deep enough for the shallowest depth.
    each = [(domain, len(members), t) for domain, members in chosen if (t := tune_search(
        search_in(domain), vectors, ladder, knob, target, queries=queries, members=members)) is not None]
    if not each:
        return tuning
    depths = min((t.depths for _, _, t in each), key=len)
    filtered = SearchTuning(
        knob, float(target), depths,
        tuple(max(t.settings[i] for _, _, t in each) for i in range(len(depths))),
        tuple(min(t.measured[i] for _, _, t in each) for i in range(len(depths))),
        sum(t.queries for _, _, t in each), ", ".join(domain for domain, _, _ in each),
        min(rows for _, rows, _ in each) / len(vectors),
    )
    return dataclasses.replace(tuning, filtered=filtered)
