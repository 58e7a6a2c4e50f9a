"""sae.lbfgs: convergence, the strong Wolfe conditions, the compact form, stopping anywhere."""

import numpy as np
import pytest
from scipy.optimize import rosen, rosen_der

from sae import h5io, lbfgs


def rosenbrock(x):
    return float(rosen(x)), rosen_der(x)


def quadratic(n=40, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    a = a @ a.T + np.eye(n)
    b = rng.standard_normal(n)
    return (lambda x: (float(0.5 * x @ a @ x - b @ x), a @ x - b)), np.linalg.solve(a, b)


def run(opt, fun, iterations=10_000, until_evaluation=None):
    while not opt.stopped and opt.iterations < iterations:
        if until_evaluation is not None and opt.evaluations >= until_evaluation:
            break
        opt.tell(*fun(opt.point))
    return opt


X0 = np.tile([-1.2, 1.0], 5)


def test_minimizes_rosenbrock_in_float64():
    opt = run(lbfgs.LBFGS(X0), rosenbrock)
    assert opt.stopped and opt.stop in (1, 2)
    assert np.abs(opt.x - 1).max() < 1e-4 and opt.f < 1e-8
    assert opt.iterations < 200 and opt.evaluations < 1.5 * opt.iterations  # mostly t = 1


def test_solves_a_quadratic():
    fun, solution = quadratic()
    opt = run(lbfgs.LBFGS(np.zeros(len(solution))), fun)
    assert opt.stopped and np.abs(opt.x - solution).max() < 1e-4


@pytest.mark.parametrize("fun", [rosenbrock, quadratic()[0]], ids=["rosenbrock", "quadratic"])
def test_every_step_satisfies_the_strong_wolfe_conditions(fun):
    n = len(X0) if fun is rosenbrock else 40
    opt = lbfgs.LBFGS(X0 if fun is rosenbrock else np.zeros(n))
    c1, c2 = opt.settings["c1"], opt.settings["c2"]
    opt.tell(*fun(opt.point))
    steps = 0
    while not opt.stopped and opt.iterations < 60:
        f0, dg0, d, t, phase = opt.f, opt.dg0, opt.d.copy(), opt.t, opt.phase
        f, g = fun(opt.point)
        if opt.tell(f, g):
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
    opt = lbfgs.LBFGS(X0, memory=4)
    checked = 0
    while opt.iterations < 20:
        if opt.tell(*rosenbrock(opt.point)) and opt.order:
            pairs = [(opt.pairs[2 * i], opt.pairs[2 * i + 1]) for i in opt.order]
            np.testing.assert_allclose(opt.d, -two_loop(opt.g, pairs), rtol=1e-9, atol=1e-12)
            checked += 1
    assert checked >= 15 and len(opt.order) == 4  # the memory wrapped around


def test_stopped_at_any_evaluation_and_restored_it_ends_bit_for_bit_the_same(tmp_path):
    """Through an HDF5 checkpoint, at every evaluation: mid-line-search ones included."""
    reference = run(lbfgs.LBFGS(X0), rosenbrock, iterations=40)
    mid_search = 0
    for k in range(1, reference.evaluations):
        opt = run(lbfgs.LBFGS(X0), rosenbrock, iterations=40, until_evaluation=k)
        mid_search += opt.phase == lbfgs.ZOOM or opt.line_evals > 0
        h5io.write_checkpoint(tmp_path / "c.h5", opt.state(), np.zeros((0, 3)), [], {})
        state, _, _, _ = h5io.read_checkpoint(tmp_path / "c.h5")
        resumed = run(lbfgs.LBFGS.from_state(state), rosenbrock, iterations=40)
        assert resumed.x.tobytes() == reference.x.tobytes(), k
        assert (resumed.f, resumed.evaluations) == (reference.f, reference.evaluations)
    assert mid_search >= 3


def test_a_state_of_another_size_is_refused():
    state = lbfgs.LBFGS(X0).state()
    with pytest.raises(ValueError, match="pairs has shape"):
        lbfgs.LBFGS.from_state(state, memory=3)


def test_stops_at_a_minimum_and_on_a_flat_function():
    opt = run(lbfgs.LBFGS(np.ones(4)), rosenbrock)  # the minimum itself: g = 0
    assert opt.stopped and opt.message == "gradient below gtol" and opt.evaluations == 1
    opt = run(lbfgs.LBFGS(np.zeros(3)), lambda x: (1.0, np.full(3, 1.0)))  # no step lowers f
    assert opt.stopped and opt.message == "line search found no acceptable step"
