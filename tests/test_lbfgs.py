"""sae.lbfgs: convergence, the strong Wolfe conditions, the compact form, stopping anywhere."""

import functools
import threading

import numpy as np
import pytest
from scipy.optimize import rosen, rosen_der

from sae import h5io, lbfgs
from sae.slices import Slices


def rosenbrock(x):
    return float(rosen(x)), rosen_der(x)


def quadratic(n=40, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    a = a @ a.T + np.eye(n)
    b = rng.standard_normal(n)
    return (lambda x: (float(0.5 * x @ a @ x - b @ x), a @ x - b)), np.linalg.solve(a, b)


def make(x0, **settings):
    """An optimizer over all slices of x0 in this process (whole slices: no padding)."""
    slices = Slices(len(x0))
    assert slices.padded == len(x0)
    return lbfgs.LBFGS(x0, slices.length, **settings)


def tell(opt, fun):
    """Evaluate fun at the optimizer's point and tell it."""
    f, opt.gradient[:] = fun(opt.point)
    return opt.tell(f)


def run(opt, fun, iterations=10_000, until_evaluation=None):
    while not opt.stopped and opt.iterations < iterations:
        if until_evaluation is not None and opt.evaluations >= until_evaluation:
            break
        tell(opt, fun)
    return opt


X0 = np.tile([-1.2, 1.0], 8)  # 16 values: two slices of 8


def test_minimizes_rosenbrock_in_float64():
    opt = run(make(X0), rosenbrock)
    assert opt.stopped and opt.stop in (1, 2)
    assert np.abs(opt.x - 1).max() < 1e-4 and opt.f < 1e-8
    assert opt.iterations < 200 and opt.evaluations < 1.5 * opt.iterations  # mostly t = 1


def test_solves_a_quadratic():
    fun, solution = quadratic()
    opt = run(make(np.zeros(len(solution))), fun)
    assert opt.stopped and np.abs(opt.x - solution).max() < 1e-4


@pytest.mark.parametrize("fun", [rosenbrock, quadratic()[0]], ids=["rosenbrock", "quadratic"])
def test_every_step_satisfies_the_strong_wolfe_conditions(fun):
    opt = make(X0 if fun is rosenbrock else np.zeros(40))
    c1, c2 = opt.settings["c1"], opt.settings["c2"]
    tell(opt, fun)
    steps = 0
    while not opt.stopped and opt.iterations < 60:
        f0, dg0, d, t, phase = opt.f, opt.dg0, opt.d.copy(), opt.t, opt.phase
        f, g = fun(opt.point)
        opt.gradient[:] = g
        if opt.tell(f):
            assert phase != lbfgs.RETRY  # no search gave up on these smooth functions
            assert f <= f0 + c1 * t * dg0
            assert abs(g @ d) <= c2 * abs(dg0)
            steps += 1
    assert steps >= 30


def two_loop(g, pairs):
    """The textbook two-loop recursion (Nocedal & Wright, Algorithm 7.4): H g."""
    q, alphas = g.copy(), []
    for s, y in reversed(pairs):
        alpha = (s @ q) / (s @ y)
        q -= alpha * y
        alphas.append(alpha)
    s, y = pairs[-1]
    r = (s @ y) / (y @ y) * q
    for (s, y), alpha in zip(pairs, reversed(alphas), strict=True):
        r += s * (alpha - (y @ r) / (s @ y))
    return r


def test_the_compact_direction_is_the_two_loop_recursion():
    opt = make(X0, memory=4)
    checked = 0
    while opt.iterations < 20:
        if tell(opt, rosenbrock) and opt.order:
            pairs = [(opt.pairs[2 * i], opt.pairs[2 * i + 1]) for i in opt.order]
            np.testing.assert_allclose(opt.d, -two_loop(opt.g, pairs), rtol=1e-9, atol=1e-12)
            checked += 1
    assert checked >= 15 and len(opt.order) == 4  # the memory wrapped around


def test_stopped_at_any_evaluation_and_restored_it_ends_bit_for_bit_the_same(tmp_path):
    """Through an HDF5 checkpoint, at every evaluation: mid-line-search ones included."""
    reference = run(make(X0), rosenbrock, iterations=40)
    mid_search = 0
    length = Slices(len(X0)).length
    for k in range(1, reference.evaluations):
        opt = run(make(X0), rosenbrock, iterations=40, until_evaluation=k)
        mid_search += opt.phase == lbfgs.ZOOM or opt.line_evals > 0
        h5io.write_checkpoint(tmp_path / "c.h5", opt.state(), np.zeros((0, 3)), [], {})
        state, _, _, _ = h5io.read_checkpoint(tmp_path / "c.h5")
        resumed = run(lbfgs.LBFGS.from_state(state, length), rosenbrock, iterations=40)
        assert resumed.x.tobytes() == reference.x.tobytes(), k
        assert (resumed.f, resumed.evaluations) == (reference.f, reference.evaluations)
    assert mid_search >= 3


def test_a_state_of_another_size_is_refused():
    state = make(X0).state()
    with pytest.raises(ValueError, match="pairs has shape"):
        lbfgs.LBFGS.from_state(state, Slices(len(X0)).length, memory=3)


def test_stops_at_a_minimum_and_on_a_flat_function():
    opt = run(make(np.ones(8)), rosenbrock)  # the minimum itself: g = 0
    assert opt.stopped and opt.message == "gradient below gtol" and opt.evaluations == 1
    opt = run(make(np.zeros(8)), lambda x: (1.0, np.full(8, 1.0)))  # no step lowers f
    assert opt.stopped and opt.message == "line search found no acceptable step"


class Ranks:
    """``size`` optimizers in threads, each on its own slices, combining their rows as MPI ranks would."""

    def __init__(self, x0, size, **settings):
        self.slices, self.size = Slices(len(x0)), size
        self.barrier = threading.Barrier(size)
        self.rows = [None] * size
        self.opts = []
        for rank in range(size):
            lo, hi = self.slices.elements(rank, size)
            combine = functools.partial(self.combine, rank)
            self.opts.append(lbfgs.LBFGS(x0[lo:hi], self.slices.length, combine, **settings))

    def combine(self, rank, partials):
        self.rows[rank] = partials.copy()
        self.barrier.wait()
        table = np.concatenate(self.rows)
        totals = np.zeros(table.shape[1])
        for row in table:  # in slice order
            totals += row
        self.barrier.wait()
        return totals

    def run(self, fun, iterations):
        points = [None] * self.size

        def rank_loop(rank):
            opt = self.opts[rank]
            lo, hi = self.slices.elements(rank, self.size)
            while not opt.stopped and opt.iterations < iterations:
                points[rank] = opt.point.copy()  # the allgather
                self.barrier.wait()
                f, g = fun(np.concatenate(points))
                opt.gradient[:] = g[lo:hi]
                self.barrier.wait()
                opt.tell(f)

        threads = [threading.Thread(target=rank_loop, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return np.concatenate([opt.x for opt in self.opts])


@pytest.mark.parametrize("size", [2, 3, 5])
def test_split_over_ranks_it_takes_the_same_steps_bit_for_bit(size):
    """Each rank on its own slices, the dot products combined in slice order: the same bits."""
    fun, _ = quadratic(n=104, seed=1)
    one = run(make(np.zeros(104)), fun, iterations=30)
    ranks = Ranks(np.zeros(104), size)
    x = ranks.run(fun, 30)
    assert ranks.slices.count == 13 and all(o.x.size for o in ranks.opts)
    assert x.tobytes() == one.x.tobytes()
    assert {(o.f, o.evaluations, o.iterations) for o in ranks.opts} == {(one.f, one.evaluations, 30)}
