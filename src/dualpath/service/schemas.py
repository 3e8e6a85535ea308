"""Request bodies of the HTTP API. Unknown fields are refused so that a typo is an error, not a default,
and numbers and booleans are strict: `"steps": true` or `"steps": "3"` is a 422, not 1 or 3 (a float field
still takes an integer, as JSON does not tell 1 from 1.0). Text fields are plain `str` (lax mode takes no
other type either), so a lone surrogate reaches `_valid_unicode` and is refused with its own message.

Static bounds live here (they appear in the OpenAPI docs); bounds that depend on the configuration
or the bank (prompt length, steps, k, vector dimension, lane names) are checked by DualPathService.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, model_validator

from dualpath.corpus.sources import unicode_problem

MAX_SEED = 2**64 - 1  # seeds are any non-negative 64-bit integer


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _valid_unicode(self) -> _Request:
        # JSON may carry lone surrogates ("\ud800"): they parse, but no encoder, SQLite or JSON
        # answer can encode them, so refuse them here (422) instead of failing mid-request (500).
        for name, value in self:
            if isinstance(value, str) and (problem := unicode_problem(value)):
                raise ValueError(f"'{name}' has {problem}")
        return self


class SearchRequest(_Request):
    """Nearest bank concepts to a text (encoded by the bank's encoder) or to a vector in the bank's space."""

    text: str | None = Field(None, description="Text to encode and search for (≤ service.max_prompt_chars).")
    vector: list[StrictFloat] | None = Field(
        None, description="A query vector of the bank's dimension (normalised)."
    )
    k: int = Field(10, ge=1, strict=True, description="Results wanted (≤ service.max_k).")
    domain: str | None = Field(None, description="Only concepts of this domain (e.g. a wiki topic).")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.text is None) == (self.vector is None):
            raise ValueError("give exactly one of 'text' or 'vector'")
        return self


class GenerateRequest(_Request):
    """A prompt to continue, concept by concept, under one lane."""

    # No max_length here: a constrained str is checked by pydantic-core as UTF-8 and would refuse a lone
    # surrogate with its own vaguer message; DualPathService checks the length before any work is done.
    prompt: str = Field(..., description="One or more sentences (≤ service.max_prompt_chars).")
    steps: int | None = Field(
        None, ge=1, strict=True, description="Concepts to generate (default generation.steps)."
    )
    lane: str | None = Field(None, description="Lane name (default decider.default_lane); see GET /info.")
    with_vectors: bool = Field(False, strict=True, description="Include each step's output vector.")
    temperature: float | None = Field(
        None, ge=0.0, le=10.0, strict=True, description="Sample n* among the shortlist at this temperature (0: greedy)."
    )
    top_k: int | None = Field(
        None, ge=0, strict=True, description="Sample among the k best candidates only (0: all)."
    )
    top_p: float | None = Field(
        None, gt=0.0, le=1.0, strict=True, description="Sample within this share of the weight."
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, strict=True,
        description="Seed of the sampling draws (0 to 2^64-1): the same seed repeats a run.",
    )
    lvm_temperature: float | None = Field(
        None, ge=0.0, le=2.0, strict=True,
        description="How widely the LVM's sampler draws each vector around its mean (0: the mean; "
        "default generation.lvm_temperature).",
    )
