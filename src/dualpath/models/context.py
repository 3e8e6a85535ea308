"""Torch helpers for left-padded contexts `(n, C, d)` with their mask `(n, C)`, shared by the LVM and the towers.

`models.heuristics` holds the numpy baselines (what evaluation compares against); these are their
differentiable twins, computed on the model's device inside the networks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dualpath.errors import ModelInputError


def check_contexts(ctx: np.ndarray, dim: int, what: str) -> None:
    """A model's input must be `(n, C, dim)`: anything else is the caller's mistake, said in one line."""
    if ctx.ndim != 3 or ctx.shape[2] != dim:
        raise ModelInputError(f"{what} expects contexts of shape (n, C, {dim}) (dimension {dim}), got {ctx.shape}")


def right_align(ctx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Move each left-padded row's real steps to the front (the layout packed RNNs expect)."""
    width = ctx.shape[1]
    offset = (width - lengths).unsqueeze(1)  # where the real steps start in the left-padded row
    index = (torch.arange(width, device=ctx.device).unsqueeze(0) + offset) % width
    return torch.gather(ctx, 1, index.unsqueeze(-1).expand_as(ctx))


def context_mean(ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit-norm mean of the real context vectors (padding is zeros and masked out)."""
    return nn.functional.normalize((ctx * mask.unsqueeze(-1).to(ctx.dtype)).sum(dim=1), dim=-1)


def context_last(ctx: torch.Tensor) -> torch.Tensor:
    """Unit-norm most recent context vector: with left padding it is always the last column."""
    return nn.functional.normalize(ctx[:, -1, :], dim=-1)


def heuristic_query(ctx: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """The `last` or `mean` heuristic query by name (a model's `residual` setting)."""
    return context_last(ctx) if kind == "last" else context_mean(ctx, mask)
