"""The dual-path decider: per step, SNAP to a bank concept, BLEND with it, or keep the NOVEL vector.

Pure numpy: lanes (thresholds, from YAML), the decision and its batched form, the stateful
per-stream decoder, telemetry, and the miners that fetch shortlists from any index.
"""

from dualpath.decider.decision import (
    GREEDY,
    NEAR_DUP_COSINE,
    Decision,
    DecisionRecord,
    Sampling,
    Shortlist,
    ShortlistBatch,
    avoid_rows,
    best_first,
    choose_grounded,
    choose_next_vector,
    choose_next_vectors,
    id_member,
    id_rows,
    is_paraphrase,
    nearest_unsaid,
    shortlist_scores,
)
from dualpath.decider.decoder import DualPathDecoder, ground_streams, step_streams, used_rows
from dualpath.decider.grounding import FEATURES, Grounding, SnapConfidence
from dualpath.decider.lanes import (
    Lane,
    Risk,
    Shares,
    calibrate_lane,
    extreme_lanes,
    get_lane,
    load_lanes,
    make_lane,
    thresholds_from_shares,
)
from dualpath.decider.miners import (
    MinerResult,
    SearchIndex,
    SyncMiner,
    ThreadedMiner,
    to_shortlist_batch,
    to_shortlists,
)
from dualpath.decider.schedules import SCHEDULES, continuous_alpha, get_schedule, reference_alpha
from dualpath.decider.telemetry import RecentRecords, TelemetrySink, read_records, summarize

# Re-exported so the error the decider raises can be caught from where the decider is imported.
from dualpath.errors import DeciderError

__all__ = [
    "FEATURES",
    "GREEDY",
    "NEAR_DUP_COSINE",
    "SCHEDULES",
    "DeciderError",
    "Decision",
    "DecisionRecord",
    "DualPathDecoder",
    "Grounding",
    "Lane",
    "MinerResult",
    "RecentRecords",
    "Risk",
    "Sampling",
    "SearchIndex",
    "Shares",
    "Shortlist",
    "ShortlistBatch",
    "SnapConfidence",
    "SyncMiner",
    "TelemetrySink",
    "ThreadedMiner",
    "avoid_rows",
    "best_first",
    "calibrate_lane",
    "choose_grounded",
    "choose_next_vector",
    "choose_next_vectors",
    "continuous_alpha",
    "extreme_lanes",
    "get_lane",
    "get_schedule",
    "ground_streams",
    "id_member",
    "id_rows",
    "is_paraphrase",
    "load_lanes",
    "make_lane",
    "nearest_unsaid",
    "read_records",
    "reference_alpha",
    "shortlist_scores",
    "step_streams",
    "summarize",
    "thresholds_from_shares",
    "to_shortlist_batch",
    "to_shortlists",
    "used_rows",
]
