"""L-BFGS with a strong-Wolfe line search, as a state machine that can stop anywhere (rank 0).

Direction, from the compact form of the L-BFGS inverse Hessian (Byrd, Nocedal &
Schnabel 1994; Nocedal & Wright, Numerical Optimization, eq. 7.24):

    d = -H g,   H = gamma I + [S  gamma Y] M [S^T; gamma Y^T],
    M = [[R^-T (D + gamma Y^T Y) R^-1, -R^-T], [-R^-1, 0]],

where S, Y hold the last ``memory`` pairs s_i = x_{i+1} - x_i, y_i = g_{i+1} - g_i
(oldest first), R is the upper triangle of S^T Y, D its diagonal and
gamma = s^T y / y^T y of the newest pair. The pairs are the rows of one array,
so an iteration reads them twice, whatever the memory: one matrix product gives
every pair's dot products with the new y and g (and g^T g), and one
matrix-vector product the direction. S^T Y and Y^T Y are kept up to date from
those products; the rest is arithmetic on memory x memory matrices, done on
Python floats. A pair with s^T y <= eps y^T y is skipped (the oldest pair, whose
place it took, is dropped all the same), so H stays positive definite.

Rank 0 runs this while the other ranks wait, right after the objective's
compute has pushed its data out of the CPU caches: then each numpy call costs
several microseconds however small its arrays. An iteration therefore makes
about ten numpy calls (the products above, the vector updates) and keeps the
small algebra (the two triangular solves, g^T d) in plain Python.

Line search, for the strong Wolfe conditions

    f(x + t d) <= f(x) + c1 t g^T d,        |g(x + t d)^T d| <= c2 |g^T d|,

Nocedal & Wright's Algorithms 3.5 (bracket: double t until an interval holds an
acceptable step) and 3.6 (zoom: safeguarded cubic interpolation inside it). The
first step is 1/|g|, later ones start at t = 1.

The search is written inside out: ``point`` is where the objective is needed
next, ``tell(f, g)`` takes its value there. Everything the optimizer knows
(iterate, pairs, bracket, counters) is plain arrays and numbers: ``state()``
returns them and ``LBFGS.from_state`` continues from them, so a run stopped at
any evaluation, mid-line-search included, and restored ends bit for bit where
the uninterrupted run does.

A search that finds no acceptable step in ``max_line_evals`` evaluations takes
the best step it saw if that lowered f (evaluated once more), else starts again
along -g with the memory cleared. Stops: |g| <= gtol (scipy's L-BFGS-B: max |g_i|
<= gtol), a relative decrease (f_old - f_new) / max(|f_old|, |f_new|, 1) <= ftol,
or no acceptable step along -g either.
"""

from __future__ import annotations

import math

import numpy as np

NAME = "lbfgs-compact-wolfe"
VERSION = 2  # of this algorithm and its state's layout; part of every checkpoint's fingerprint
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
    "phase", "iterations", "evaluations", "stop", "f", "grad_norm", "dg0", "t",
    "t_lo", "f_lo", "dg_lo", "t_hi", "f_hi", "dg_hi", "line_evals",
)  # fmt: skip
INTS = {"phase", "iterations", "evaluations", "stop", "line_evals"}


class LBFGS:
    """Minimize f from x0: ask ``point``, ``tell`` f and its gradient there, repeat.

    memory: pairs kept (scipy's maxcor); c1, c2: the Wolfe constants;
    max_line_evals: evaluations per line search before it gives up.
    """

    def __init__(
        self,
        x0,
        memory: int = 10,
        c1: float = 1e-4,
        c2: float = 0.9,
        gtol: float = 1e-5,
        ftol: float = 1e7 * EPS,
        max_line_evals: int = 20,
    ):
        x0 = np.asarray(x0, dtype=np.float64)
        n, m = x0.size, int(memory)
        self.settings = {
            "memory": m, "c1": float(c1), "c2": float(c2), "gtol": float(gtol),
            "ftol": float(ftol), "max_line_evals": int(max_line_evals),
        }  # fmt: skip
        self.x = x0.copy()  # the iterate
        self.d = np.zeros(n)  # the search direction
        self.xt = x0.copy()  # the trial point: x + t d, or x0 before the first evaluation
        # One array holds the pairs, then the newest y and the gradient at x: the products
        # with [y; g] and the direction (pairs and g together) are one BLAS call each.
        # Pair i lives in rows 2i (s) and 2i+1 (y) of ``memory`` slots; a new pair takes the
        # oldest one's slot when all are in use. order: slots of the kept pairs, oldest first.
        self._rows = np.zeros((2 * m + 2, n))
        self.pairs = self._rows[: 2 * m]
        self._yg = self._rows[2 * m :]  # [y; g]
        self.g = self._rows[-1]  # the gradient at x
        self.sy = [[0.0] * m for _ in range(m)]  # s_i . y_j for i older than (or equal to) j, else 0
        self.yy = [[0.0] * m for _ in range(m)]  # y_i . y_j
        self.order: list[int] = []
        self.phase, self.iterations, self.evaluations, self.stop = START, 0, 0, 0
        self.f = self.grad_norm = self.dg0 = self.t = math.nan
        self.t_lo = self.f_lo = self.dg_lo = self.t_hi = self.f_hi = self.dg_hi = math.nan
        self.line_evals = 0
        self._products = np.empty((2 * m + 2, 2))  # scratch: every row against [y; g]
        self._coef = np.empty(2 * m + 2)  # scratch: -H g's coefficients for the rows

    # -- state -------------------------------------------------------------------------------

    def state(self) -> dict:
        """Everything needed to continue, as numpy arrays (for a checkpoint)."""
        arrays = {k: getattr(self, k) for k in ("x", "g", "d", "xt", "pairs")}
        arrays.update(sy=np.array(self.sy, dtype=float), yy=np.array(self.yy, dtype=float))
        arrays["order"] = np.array(self.order, dtype=np.int64)
        scalars = {k: np.array(getattr(self, k), dtype=np.int64 if k in INTS else float) for k in SCALARS}
        return {**arrays, **scalars}

    @classmethod
    def from_state(cls, state: dict, **settings) -> LBFGS:
        """The optimizer ``state()`` described, with the same settings it was made with."""
        opt = cls(state["x"], **settings)
        m = opt.settings["memory"]
        for k in ("x", "g", "d", "xt", "pairs", "sy", "yy"):
            shape = (m, m) if k in ("sy", "yy") else getattr(opt, k).shape
            if shape != state[k].shape:
                raise ValueError(f"state {k} has shape {state[k].shape}, expected {shape}")
        for k in ("x", "g", "d", "xt", "pairs"):
            getattr(opt, k)[...] = state[k]
        opt.sy, opt.yy = np.asarray(state["sy"], float).tolist(), np.asarray(state["yy"], float).tolist()
        opt.order = [int(i) for i in state["order"]]
        for k in SCALARS:
            setattr(opt, k, int(state[k]) if k in INTS else float(state[k]))
        return opt

    # -- the loop ----------------------------------------------------------------------------

    @property
    def point(self) -> np.ndarray:
        """Where f is wanted next (a buffer the optimizer reuses: copy it to keep it)."""
        return self.xt

    @property
    def stopped(self) -> bool:
        return self.phase == STOPPED

    @property
    def message(self) -> str:
        return MESSAGES[self.stop] if self.stopped else "the maximum number of iterations"

    def tell(self, f: float, g: np.ndarray) -> bool:
        """f and its gradient g at ``point``; True when this ended an iteration."""
        self.evaluations += 1
        f = float(f)
        if self.phase == START:
            self.f, self.g[:] = f, g
            self.grad_norm = math.sqrt(np.dot(self.g, self.g))
            self._new_direction()
            return False
        if self.phase == RETRY:  # the best step of a failed search, evaluated again: take it
            return self._accept(f, g)
        c1, c2 = self.settings["c1"], self.settings["c2"]
        t, dg = self.t, float(np.dot(g, self.d))
        self.line_evals += 1
        armijo = f <= self.f + c1 * t * self.dg0  # False for nan
        if self.phase == BRACKET:
            if not armijo or not f < self.f_lo:
                self._bracket(self.t_lo, self.f_lo, self.dg_lo, t, f, dg)
            elif abs(dg) <= -c2 * self.dg0:
                return self._accept(f, g)
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
                return self._accept(f, g)
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
        if t == 1.0:  # the usual first trial: one call (x + 1.0 d is x + d, bit for bit)
            np.add(self.x, self.d, out=self.xt)
        else:
            np.multiply(self.d, t, out=self.xt)
            self.xt += self.x

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
            self._new_direction()
        else:
            self.phase, self.stop = STOPPED, 3

    # -- iterations --------------------------------------------------------------------------

    def _accept(self, f: float, g: np.ndarray) -> bool:
        """x + t d becomes the iterate: store the pair, test for convergence, next direction."""
        m = self.settings["memory"]
        if len(self.order) == m:  # the oldest pair makes room (and is gone, should the new one fail)
            slot, self.order = self.order[0], self.order[1:]
        else:
            slot = min(set(range(m)) - set(self.order))
        yg = self._yg  # [y; g]: the new y and g side by side, for one product with all rows
        np.subtract(g, self.g, out=yg[0])
        self.g[:] = g  # self.g is yg[1]
        np.subtract(self.xt, self.x, out=self.pairs[2 * slot])
        self.pairs[2 * slot + 1] = yg[0]
        self.x, self.xt = self.xt, self.x
        f_old, self.f = self.f, f
        self.iterations += 1
        np.matmul(self._rows, yg.T, out=self._products)
        products = self._products.tolist()  # row r: [row_r . y, row_r . g]; the last row is g
        self.grad_norm = math.sqrt(products[-1][1])
        if products[2 * slot][0] > EPS * products[2 * slot + 1][0]:  # s^T y > eps y^T y
            sy, yy = self.sy, self.yy
            sy[slot] = [0.0] * m  # the new s against older y: not part of R
            for i in range(m):
                sy[i][slot] = products[2 * i][0]
                yy[i][slot] = products[2 * i + 1][0]
            yy[slot] = [products[2 * i + 1][0] for i in range(m)]
            self.order = [*self.order, slot]
        if self.grad_norm <= self.settings["gtol"]:
            self.phase, self.stop = STOPPED, 1
        elif f_old - f <= self.settings["ftol"] * max(abs(f_old), abs(f), 1.0):
            self.phase, self.stop = STOPPED, 2
        else:
            self._new_direction(products)
        return True

    def _new_direction(self, products=None) -> None:
        """d = -H g from the kept pairs and a first trial step; starts the line search.

        products: every row of ``_rows`` against [y; g], as lists (needed when pairs are kept).
        """
        o = self.order
        if o:
            k, sy, yy = len(o), self.sy, self.yy
            gamma = sy[o[-1]][o[-1]] / yy[o[-1]][o[-1]]
            r = [[sy[i][j] for j in o] for i in o]  # R, upper triangular
            a = [0.0] * k  # R^-1 S^T g
            for i in reversed(range(k)):
                a[i] = (products[2 * o[i]][1] - sum(r[i][j] * a[j] for j in range(i + 1, k))) / r[i][i]
            b = [0.0] * k  # R^-T (-(D a + gamma (Y^T Y a - Y^T g)))
            for i in range(k):
                yy_a = sum(yy[o[i]][o[j]] * a[j] for j in range(k))
                inner = r[i][i] * a[i] + gamma * (yy_a - products[2 * o[i] + 1][1])
                b[i] = (-inner - sum(r[j][i] * b[j] for j in range(i))) / r[i][i]
            coef = [0.0] * len(products)  # -(gamma g + [S gamma Y] M [S^T g; gamma Y^T g]), row by row
            for i, slot in enumerate(o):
                coef[2 * slot], coef[2 * slot + 1] = b[i], gamma * a[i]
            coef[-1] = -gamma  # the row of g
            self._coef[:] = coef
            np.matmul(self._coef, self._rows, out=self.d)
            self.dg0 = math.fsum(c * p[1] for c, p in zip(coef, products, strict=True))  # g^T d from row^T g
            step = 1.0
        if not o or not self.dg0 < 0:  # no pairs, or rounding spoilt descent: steepest descent
            self.order = []
            np.negative(self.g, out=self.d)
            self.dg0 = -products[-1][1] if products is not None else float(np.dot(self.g, self.d))  # -g^T g
            step = 1.0 / math.sqrt(-self.dg0) if self.dg0 < 0 else 0.0
            if not self.dg0 < 0:  # g = 0
                self.phase, self.stop = STOPPED, 1
                return
        self.phase, self.line_evals = BRACKET, 0
        self.t_lo, self.f_lo, self.dg_lo = 0.0, self.f, self.dg0
        self.t_hi = self.f_hi = self.dg_hi = math.nan
        self._try(step)
