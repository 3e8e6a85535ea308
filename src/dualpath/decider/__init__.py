"""The dual-path decider: per step, SNAP to a bank concept, BLEND with it, or keep the NOVEL vector.

Pure numpy: lanes (thresholds, from YAML), the decision and its batched form, and the stateful
per-stream decoder.
"""

from dualpath.decider.decision import (
    NEAR_DUP_COSINE,
    Decision,
    DecisionRecord,
    Shortlist,
    ShortlistBatch,
    choose_next_vector,
    choose_next_vectors,
)
from dualpath.decider.decoder import DualPathDecoder
from dualpath.decider.lanes import (
    Lane,
    Shares,
    calibrate_lane,
    get_lane,
    load_lanes,
    make_lane,
    thresholds_from_shares,
)
from dualpath.decider.schedules import SCHEDULES, continuous_alpha, get_schedule, reference_alpha

__all__ = [
    "NEAR_DUP_COSINE",
    "SCHEDULES",
    "Decision",
    "DecisionRecord",
    "DualPathDecoder",
    "Lane",
    "Shares",
    "Shortlist",
    "ShortlistBatch",
    "calibrate_lane",
    "choose_next_vector",
    "choose_next_vectors",
    "continuous_alpha",
    "get_lane",
    "get_schedule",
    "load_lanes",
    "make_lane",
    "reference_alpha",
    "thresholds_from_shares",
]
