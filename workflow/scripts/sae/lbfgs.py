"""L-BFGS with a strong-Wolfe line search, as a state machine that can stop anywhere,
its vectors split over the ranks in fixed slices (sae.slices).

Direction, from the compact form of the L-BFGS inverse Hessian (Byrd, Nocedal &
Schnabel 1994; Nocedal & Wright, Numerical Optimization, eq. 7.24):

    d = -H g,   H = gamma I + [S  gamma Y] M [S^T; gamma Y^T],
    M = [[R^-T (D + gamma Y^T Y) R^-1, -R^-T], [-R^-1, 0]],

where S, Y hold the last ``memory`` pairs s_i = x_{i+1} - x_i, y_i = g_{i+1} - g_i
(oldest first), R is the upper triangle of S^T Y, D its diagonal and
gamma = s^T y / y^T y of the newest pair. S^T Y and Y^T Y are kept up to date from
the dot products of every pair with each new y; the rest is arithmetic on
memory x memory matrices. A pair with s^T y <= eps y^T y is skipped (the oldest
pair, whose place it took, is dropped all the same), so H stays positive definite.

Split over the ranks. Every rank runs this same state machine on its own slices of
the vectors (x, g, d, the pairs, the trial point) and on the same numbers: the
dot products. Each evaluation makes one pass over the rank's slices (``_step``):
s = x_trial - x and y = g_trial - g go into the pair slot the next pair will take
(the pair they overwrite is dropped at the next acceptance whatever happens, and
no direction is computed before it), and every slice's dot products of the pair
rows with y and g_trial, g_trial . d and g_trial . g_trial are computed. The
caller's ``combine`` sums those rows over all ranks' slices in slice order (one
collective: sae.parallel), so every rank sees the same totals, takes the same
decisions and computes the same direction coefficients; the direction and the
trial points are elementwise, slice by slice. A slice's dot products use four
running sums added pairwise at the end, and no floating-point operation is
reordered or fused by the compiler (numba without fastmath), so the bits depend
on neither the rank count nor the CPU. With one rank (``combine`` omitted) the
same code runs on all slices.

Line search, for the strong Wolfe conditions

    f(x + t d) <= f(x) + c1 t g^T d,        |g(x + t d)^T d| <= c2 |g^T d|,

Nocedal & Wright's Algorithms 3.5 (bracket: double t until an interval holds an
acceptable step) and 3.6 (zoom: safeguarded cubic interpolation inside it). The
first step is 1/|g|, later ones start at t = 1.

The search is written inside out: ``point`` is where the objective is needed
next, the caller writes the gradient there into ``gradient`` and calls
``tell(f)``. Everything the optimizer knows (iterate, pairs, bracket, counters)
is plain arrays and numbers: ``state()`` returns them and ``LBFGS.from_state``
continues from them, so a run stopped at any evaluation, mid-line-search
included, and restored ends bit for bit where the uninterrupted run does.

A search that finds no acceptable step in ``max_line_evals`` evaluations takes
the best step it saw if that lowered f (evaluated once more), else starts again
along -g with the memory cleared. Stops: |g| <= gtol (scipy's L-BFGS-B: max |g_i|
<= gtol), a relative decrease (f_old - f_new) / max(|f_old|, |f_new|, 1) <= ftol,
or no acceptable step along -g either.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .slices import GD, GG, F, Y, row_length

NAME = "lbfgs-compact-wolfe-sliced"
VERSION = 3  # of this algorithm and its state's layout; part of every checkpoint's fingerprint
EPS = float(np.finfo(np.float64).eps)

# phases
START, BRACKET, ZOOM, RETRY, STOPPED = 0, 1, 2, 3, 4
MESSAGES = {
    0: "",
    1: "gradient below gtol",
    2: "relative reduction of f below ftol",
    3: "line search found no acceptable step",
}
SCALARS = (
    "phase", "iterations", "evaluations", "stop", "f", "gg", "dg0", "t",
    "t_lo", "f_lo", "dg_lo", "t_hi", "f_hi", "dg_hi", "line_evals",
)  # fmt: skip
INTS = {"phase", "iterations", "evaluations", "stop", "line_evals"}
ARRAYS = ("x", "g", "d", "xt", "pairs")  # split in slices; sy, yy and order are every rank's alike


class LBFGS:
    """Minimize f from x0: ask ``point``, fill ``gradient`` and ``tell`` f there, repeat.

    x0: this rank's slices of the start (whole slices of ``length``, zero-padded past
    the vector's end). combine(partials) -> totals: the (slices, columns) rows of
    every rank's slices summed in slice order (omitted: this process holds every
    slice). point: a buffer to keep the trial point in (e.g. this rank's part of
    the parameter vector that an allgather completes). memory: pairs kept (scipy's
    maxcor); c1, c2: the Wolfe constants; max_line_evals: evaluations per line
    search before it gives up.
    """

    def __init__(
        self,
        x0,
        length: int,
        combine=None,
        memory: int = 10,
        c1: float = 1e-4,
        c2: float = 0.9,
        gtol: float = 1e-5,
        ftol: float = 1e7 * EPS,
        max_line_evals: int = 20,
        point: np.ndarray | None = None,
    ):
        x0 = np.asarray(x0, dtype=np.float64)
        n, m = x0.size, int(memory)
        if n % length:
            raise ValueError(f"{n} values are not whole slices of {length}")
        self.settings = {
            "memory": m, "c1": float(c1), "c2": float(c2), "gtol": float(gtol),
            "ftol": float(ftol), "max_line_evals": int(max_line_evals),
        }  # fmt: skip
        self.length = length
        self.x = x0.copy()  # the iterate
        self.g = np.zeros(n)  # the gradient at x
        self.d = np.zeros(n)  # the search direction
        self.xt = np.empty(n) if point is None else point  # the trial point: x + t d, or x0 at first
        self.xt[:] = x0
        self.gradient = np.zeros(n)  # the caller's: the gradient at the trial point
        # Pair i lives in rows 2i (s) and 2i + 1 (y) of ``memory`` slots; a new pair takes the
        # oldest one's slot when all are in use. order: slots of the kept pairs, oldest first.
        self.pairs = np.zeros((2 * m, n))
        self.sy = np.zeros((m, m))  # s_i . y_j for i older than (or equal to) j, else 0
        self.yy = np.zeros((m, m))  # y_i . y_j
        self.order: list[int] = []
        self.phase, self.iterations, self.evaluations, self.stop = START, 0, 0, 0
        self.f = self.gg = self.dg0 = self.t = math.nan
        self.t_lo = self.f_lo = self.dg_lo = self.t_hi = self.f_hi = self.dg_hi = math.nan
        self.line_evals = 0
        self.partials = np.zeros((n // length, row_length(m)))
        self._totals = np.empty(row_length(m))
        self._rows = np.arange(n // length)
        self.combine = combine if combine is not None else self._sum_local
        self._coef = np.empty(2 * m + 1)  # scratch: -H g's coefficients for the kept rows, then g

    def _sum_local(self, partials: np.ndarray) -> np.ndarray:
        sum_rows(partials, self._rows, self._totals)
        return self._totals

    # -- state -------------------------------------------------------------------------------

    def state(self) -> dict:
        """Everything needed to continue, as numpy arrays (this rank's slices of ARRAYS)."""
        arrays = {k: getattr(self, k) for k in (*ARRAYS, "sy", "yy")}
        arrays["order"] = np.array(self.order, dtype=np.int64)
        scalars = {k: np.array(getattr(self, k), dtype=np.int64 if k in INTS else float) for k in SCALARS}
        return {**arrays, **scalars}

    @classmethod
    def from_state(cls, state: dict, length: int, combine=None, point=None, **settings) -> LBFGS:
        """The optimizer ``state()`` described (this rank's slices), with the settings it was made with."""
        opt = cls(state["x"], length, combine, point=point, **settings)
        for k in (*ARRAYS, "sy", "yy"):
            if getattr(opt, k).shape != state[k].shape:
                raise ValueError(f"state {k} has shape {state[k].shape}, expected {getattr(opt, k).shape}")
            getattr(opt, k)[...] = state[k]
        opt.order = [int(i) for i in state["order"]]
        for k in SCALARS:
            setattr(opt, k, int(state[k]) if k in INTS else float(state[k]))
        return opt

    # -- the loop ----------------------------------------------------------------------------

    @property
    def point(self) -> np.ndarray:
        """Where f is wanted next (this rank's slices; a buffer the optimizer reuses)."""
        return self.xt

    @property
    def stopped(self) -> bool:
        return self.phase == STOPPED

    @property
    def grad_norm(self) -> float:
        """|g| at the iterate."""
        return math.sqrt(self.gg)

    @property
    def message(self) -> str:
        return MESSAGES[self.stop] if self.stopped else "the maximum number of iterations"

    def _slot(self) -> int:
        """The pair slot the next pair takes: the oldest pair's when all are in use."""
        m = self.settings["memory"]
        if len(self.order) == m:
            return self.order[0]
        return next(slot for slot in range(m) if slot not in self.order)

    def tell(self, f_common: float, f_parts: np.ndarray | None = None) -> bool:
        """f at ``point`` is f_common plus f_parts (one value per slice of this rank's, summed
        over all slices in slice order); ``gradient`` holds the gradient there. True when
        this ended an iteration."""
        self.evaluations += 1
        _step(
            self.xt,
            self.x,
            self.g,
            self.gradient,
            self.d,
            self.pairs,
            self._slot(),
            self.length,
            self.partials,
        )
        self.partials[:, F] = 0.0 if f_parts is None else f_parts
        totals = self.combine(self.partials)
        f = float(f_common) + float(totals[F])
        if self.phase == START:
            self.f, self.gg = f, float(totals[GG])
            self.g, self.gradient = self.gradient, self.g
            self._new_direction(totals, accepted=False)
            return False
        if self.phase == RETRY:  # the best step of a failed search, evaluated again: take it
            return self._accept(f, totals)
        c1, c2 = self.settings["c1"], self.settings["c2"]
        t, dg = self.t, float(totals[GD])
        self.line_evals += 1
        armijo = f <= self.f + c1 * t * self.dg0  # False for nan
        if self.phase == BRACKET:
            if not armijo or not f < self.f_lo:
                self._bracket(self.t_lo, self.f_lo, self.dg_lo, t, f, dg)
            elif abs(dg) <= -c2 * self.dg0:
                return self._accept(f, totals)
            elif dg >= 0:
                self._bracket(t, f, dg, self.t_lo, self.f_lo, self.dg_lo)
            else:
                self.t_lo, self.f_lo, self.dg_lo = t, f, dg
                self._try(2.0 * t)
                return False
        else:  # ZOOM
            if not armijo or not f < self.f_lo:
                self.t_hi, self.f_hi, self.dg_hi = t, f, dg
            elif abs(dg) <= -c2 * self.dg0:
                return self._accept(f, totals)
            else:
                if dg * (self.t_hi - self.t_lo) >= 0:
                    self.t_hi, self.f_hi, self.dg_hi = self.t_lo, self.f_lo, self.dg_lo
                self.t_lo, self.f_lo, self.dg_lo = t, f, dg
        if self.line_evals >= self.settings["max_line_evals"] or self._interval_too_small():
            self._give_up()
        else:
            self._try(self._zoom_step())
        return False

    # -- line search -------------------------------------------------------------------------

    def _try(self, t: float) -> None:
        self.t = t
        _trial(self.x, self.d, t, self.xt)

    def _bracket(self, t_lo, f_lo, dg_lo, t_hi, f_hi, dg_hi) -> None:
        self.phase = ZOOM
        self.t_lo, self.f_lo, self.dg_lo = t_lo, f_lo, dg_lo
        self.t_hi, self.f_hi, self.dg_hi = t_hi, f_hi, dg_hi

    def _interval_too_small(self) -> bool:
        return self.phase == ZOOM and abs(self.t_hi - self.t_lo) <= EPS * max(abs(self.t_lo), abs(self.t_hi))

    def _zoom_step(self) -> float:
        """The cubic's minimizer on [lo, hi], kept 10% away from either end; else the midpoint."""
        a, fa, ga, b, fb, gb = self.t_lo, self.f_lo, self.dg_lo, self.t_hi, self.f_hi, self.dg_hi
        left, right = min(a, b), max(a, b)
        margin = 0.1 * (right - left)
        t = 0.5 * (a + b)
        if math.isfinite(fb) and math.isfinite(gb):
            d1 = ga + gb - 3.0 * (fa - fb) / (a - b)
            disc = d1 * d1 - ga * gb
            if disc >= 0:
                d2 = math.copysign(math.sqrt(disc), b - a)
                denom = gb - ga + 2.0 * d2
                if denom != 0:
                    cubic = b - (b - a) * (gb + d2 - d1) / denom
                    if math.isfinite(cubic):
                        t = cubic
        return min(max(t, left + margin), right - margin)

    def _give_up(self) -> None:
        """No acceptable step: take the best one seen if it lowered f, else restart or stop."""
        if self.t_lo > 0:
            self.phase = RETRY
            self._try(self.t_lo)
        elif self.order:  # drop the curvature memory and search along -g
            self.order = []
            self._new_direction(None, accepted=False)
        else:
            self.phase, self.stop = STOPPED, 3

    # -- iterations --------------------------------------------------------------------------

    def _accept(self, f: float, totals: np.ndarray) -> bool:
        """x + t d becomes the iterate: keep the pair, test for convergence, next direction."""
        m = self.settings["memory"]
        slot = self._slot()  # where _step put this evaluation's s and y
        if len(self.order) == m:  # the oldest pair makes room (and is gone, should the new one fail)
            self.order = self.order[1:]
        self.g, self.gradient = self.gradient, self.g
        f_old, self.f, self.gg = self.f, f, float(totals[GG])
        self.iterations += 1
        if totals[Y + 2 * slot] > EPS * totals[Y + 2 * slot + 1]:  # s^T y > eps y^T y
            _keep_pair(self.sy, self.yy, slot, totals[Y : Y + 2 * m])
            self.order = [*self.order, slot]
        if self.grad_norm <= self.settings["gtol"]:
            self.phase, self.stop = STOPPED, 1
        elif f_old - f <= self.settings["ftol"] * max(abs(f_old), abs(f), 1.0):
            self.phase, self.stop = STOPPED, 2
        else:
            self._new_direction(totals, accepted=True)
        if self.stopped:
            self.x[:] = self.xt
        return True

    def _new_direction(self, totals, accepted: bool) -> None:
        """d = -H g from the kept pairs and a first trial step; starts the line search.

        totals: the combined partial sums of the evaluation at the new iterate (None
        after a failed search: then there are no pairs). accepted: x takes the trial
        point first.
        """
        m, k = self.settings["memory"], len(self.order)
        rows = np.array([r for slot in self.order for r in (2 * slot, 2 * slot + 1)], dtype=np.int64)
        self.dg0, step = math.nan, 1.0
        if k:
            self.dg0 = _coefficients(
                self.sy, self.yy, rows, totals[Y + 2 * m : Y + 4 * m], self.gg, self._coef
            )
        if not k or not self.dg0 < 0:  # no pairs, or rounding spoilt descent: steepest descent
            self.order, rows = [], rows[:0]
            self._coef[0] = -1.0
            self.dg0 = -self.gg
            if not self.dg0 < 0:  # g = 0
                self.phase, self.stop = STOPPED, 1
                return
            step = 1.0 / math.sqrt(self.gg)
        self.phase, self.line_evals, self.t = BRACKET, 0, step
        self.t_lo, self.f_lo, self.dg_lo = 0.0, self.f, self.dg0
        self.t_hi = self.f_hi = self.dg_hi = math.nan
        _direction(rows, self._coef, self.pairs, self.g, self.xt, self.x, self.d, step, accepted, self.length)


# -- the per-slice passes, compiled (no fastmath: every operation as written) when this ---------
# module is imported, or loaded from numba's cache beside it (its signatures are explicit).


@njit("void(float64[:, ::1], int64[::1], float64[::1])", cache=True)
def sum_rows(partials, rows, out):
    """out = the sum of partials[rows[k]] over k, added in that order (slice order, for slices)."""
    out[:] = 0.0
    for k in range(rows.size):
        for c in range(partials.shape[1]):
            out[c] += partials[rows[k], c]


@njit("void(f8[:, ::1], f8[:, ::1], int64, f8[::1])", cache=True)
def _keep_pair(sy, yy, slot, against_y):
    """S^T Y and Y^T Y with the new pair in ``slot``: against_y[r] is pair row r . y (s of pair i:
    r = 2i, y: 2i + 1). The new s against older y is not part of R: its row is zero."""
    m = sy.shape[0]
    for i in range(m):
        sy[slot, i] = 0.0
    for i in range(m):
        sy[i, slot] = against_y[2 * i]
        yy[i, slot] = against_y[2 * i + 1]
        yy[slot, i] = against_y[2 * i + 1]


@njit("UniTuple(float64, 2)(float64[::1], float64[::1], float64[::1], int64, int64)", cache=True)
def _two_dots(a, b, c, lo, hi):
    """(a . b, a . c) over [lo, hi) (a multiple of 4 long): four running sums each, added pairwise."""
    b0 = b1 = b2 = b3 = 0.0
    c0 = c1 = c2 = c3 = 0.0
    for q in range(lo, hi, 4):
        b0 += a[q] * b[q]
        b1 += a[q + 1] * b[q + 1]
        b2 += a[q + 2] * b[q + 2]
        b3 += a[q + 3] * b[q + 3]
        c0 += a[q] * c[q]
        c1 += a[q + 1] * c[q + 1]
        c2 += a[q + 2] * c[q + 2]
        c3 += a[q + 3] * c[q + 3]
    return (b0 + b1) + (b2 + b3), (c0 + c1) + (c2 + c3)


@njit("void(f8[::1], f8[::1], f8[::1], f8[::1], f8[::1], f8[:, ::1], int64, int64, f8[:, ::1])", cache=True)
def _step(xt, x, g, gt, d, pairs, slot, length, out):
    """The evaluation's pass: s = xt - x, y = gt - g into slot's rows; per slice k, into out[k]:
    gt . d, gt . gt, and every pair row against y and against gt."""
    rows = pairs.shape[0]
    s, y = pairs[2 * slot], pairs[2 * slot + 1]
    for k in range(x.size // length):
        lo, hi = k * length, (k + 1) * length
        for q in range(lo, hi):
            s[q] = xt[q] - x[q]
            y[q] = gt[q] - g[q]
        out[k, GD], out[k, GG] = _two_dots(gt, d, gt, lo, hi)
        for r in range(rows):
            out[k, Y + r], out[k, Y + rows + r] = _two_dots(pairs[r], y, gt, lo, hi)


@njit("f8(f8[:, ::1], f8[:, ::1], int64[::1], f8[::1], f8, f8[::1])", cache=True)
def _coefficients(sy, yy, rows, against_g, gg, coef):
    """-H g's coefficients (compact form) for the kept pair rows (s, y; oldest pair first),
    then for g, into coef; returns g . d. against_g[r]: pair row r . g."""
    k = rows.size // 2
    o = rows[0::2] // 2  # the kept slots, oldest first
    last = o[k - 1]
    gamma = sy[last, last] / yy[last, last]
    a = np.empty(k)  # R^-1 S^T g
    for i in range(k - 1, -1, -1):
        acc = 0.0
        for j in range(i + 1, k):
            acc += sy[o[i], o[j]] * a[j]
        a[i] = (against_g[2 * o[i]] - acc) / sy[o[i], o[i]]
    b = np.empty(k)  # R^-T (-(D a + gamma (Y^T Y a - Y^T g)))
    for i in range(k):
        yy_a = 0.0
        for j in range(k):
            yy_a += yy[o[i], o[j]] * a[j]
        inner = sy[o[i], o[i]] * a[i] + gamma * (yy_a - against_g[2 * o[i] + 1])
        acc = 0.0
        for j in range(i):
            acc += sy[o[j], o[i]] * b[j]
        b[i] = (-inner - acc) / sy[o[i], o[i]]
    dg0 = -gamma * gg
    for i in range(k):
        coef[2 * i], coef[2 * i + 1] = b[i], gamma * a[i]
        dg0 += b[i] * against_g[2 * o[i]] + gamma * a[i] * against_g[2 * o[i] + 1]
    coef[2 * k] = -gamma
    return dg0


@njit(
    "void(int64[::1], f8[::1], f8[:, ::1], f8[::1], f8[::1], f8[::1], f8[::1], f8, boolean, int64)",
    cache=True,
)
def _direction(rows, coef, pairs, g, xt, x, d, t, accepted, length):
    """Slice by slice: x = xt if accepted; d = coef[-1] g + coef[i] pairs[rows[i]], added in
    that order; xt = x + t d (x + 1.0 d is x + d, bit for bit)."""
    last = rows.size
    for k in range(x.size // length):
        lo, hi = k * length, (k + 1) * length
        if accepted:
            for q in range(lo, hi):
                x[q] = xt[q]
        for q in range(lo, hi):
            d[q] = coef[last] * g[q]
        for i in range(last):
            row, c = pairs[rows[i]], coef[i]
            for q in range(lo, hi):
                d[q] += c * row[q]
        for q in range(lo, hi):
            xt[q] = x[q] + t * d[q]


@njit("void(f8[::1], f8[::1], f8, f8[::1])", cache=True)
def _trial(x, d, t, xt):
    """xt = x + t d."""
    for q in range(x.size):
        xt[q] = x[q] + t * d[q]
