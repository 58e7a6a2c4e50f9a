"""The optimizer's vectors cut into fixed slices, and which rank owns which.

Every vector of the optimizer (the parameters, the gradient, the direction, the
curvature pairs, the trial point) is cut into ``count`` slices of ``length``
values; the last one is padded with zeros. Both numbers follow from the vector's
length alone, never from the number of ranks, so a dot product summed slice by
slice, then over the slices in slice order, is the same bits on any rank count.
Each rank owns a contiguous run of whole slices, as evenly spread as can be
(ranks beyond the ``count``-th own none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_SLICES = 64  # slices of a vector (fewer for short ones); part of the optimizer's definition
LANE = 8  # a slice's length is a multiple of this
MEMORY = 5  # curvature pairs the optimizer keeps (L-BFGS's m), 2 rows of each vector's length

# Each slice gives one row of partial sums per evaluation (sae.lbfgs fills its rows, and
# the ranks' rows are summed over all slices in slice order): F, the objective's share of
# f; GD, g_trial . d; GG, g_trial . g_trial; then from Y on, every pair row r (s of pair i:
# r = 2i, y: 2i + 1) against y, then every pair row against g_trial.
F, GD, GG, Y = 0, 1, 2, 3


def row_length(memory: int = MEMORY) -> int:
    """Values in one slice's row of partial sums, for ``memory`` pairs."""
    return Y + 4 * memory


@dataclass(frozen=True)
class Slices:
    """Vectors of ``size`` values as ``count`` slices of ``length`` (``padded`` = count * length)."""

    size: int

    @property
    def length(self) -> int:
        return LANE * -(-self.size // (LANE * MAX_SLICES))

    @property
    def count(self) -> int:
        return -(-self.size // self.length)

    @property
    def padded(self) -> int:
        return self.count * self.length

    def owned(self, rank: int, ranks: int) -> tuple[int, int]:
        """Slices [first, stop) of ``rank`` among ``ranks``."""
        return self.count * rank // ranks, self.count * (rank + 1) // ranks

    def elements(self, rank: int, ranks: int) -> tuple[int, int]:
        """Values [lo, hi) of ``rank``'s slices, in the padded vector."""
        first, stop = self.owned(rank, ranks)
        return first * self.length, stop * self.length

    def pad(self, vector: np.ndarray) -> np.ndarray:
        """A copy of ``vector`` (float64) padded with zeros to ``padded`` values."""
        out = np.zeros(self.padded)
        out[: self.size] = vector
        return out
