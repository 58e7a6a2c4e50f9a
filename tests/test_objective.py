"""The objective: Ng's equations, the gradient, and exact order-free sums."""

import numpy as np
import pytest

from conftest import smooth_images
from sae import gradient, objective, patches
from sae.kernel import BlockKernel

RHO, LAM, BETA = 0.01, 1e-4, 3.0


def data(n, side=8, seed=0):
    return patches.sample(smooth_images(), n, side, seed)[0].astype(np.float64)


def random_theta(v, h, seed=1):
    rng = np.random.default_rng(seed)
    theta = objective.initial_theta(v, h, rng)
    theta[2 * v * h :] = rng.normal(scale=0.1, size=v + h)  # nonzero biases exercise their gradient
    return theta


def test_initial_theta_follows_ng():
    v, h = 64, 25
    theta = objective.initial_theta(v, h, np.random.default_rng(0))
    w1, w2, b1, b2 = objective.unpack(theta, v, h)
    r = np.sqrt(6 / (v + h + 1))
    assert w1.shape == (h, v) and w2.shape == (v, h)
    assert np.abs(theta[: 2 * v * h]).max() <= r and np.abs(theta[: 2 * v * h]).max() > 0.9 * r
    assert not b1.any() and not b2.any()
    assert np.array_equal(theta, objective.initial_theta(v, h, np.random.default_rng(0)))


def test_gradient_matches_central_differences():
    """Numerical gradient check in float64, relative error < 1e-7 (Ng's check)."""
    x = data(200)
    v, h = 64, 25
    theta = random_theta(v, h)

    def cost(t):
        return gradient.evaluate(t, x, h, RHO, LAM, BETA, block_size=64)[0]

    _, grad = gradient.evaluate(theta, x, h, RHO, LAM, BETA, block_size=64)
    eps = 1e-5
    numeric = np.empty_like(theta)
    for i in range(len(theta)):
        step = np.zeros_like(theta)
        step[i] = eps
        numeric[i] = (cost(theta + step) - cost(theta - step)) / (2 * eps)
    rel = np.linalg.norm(numeric - grad) / np.linalg.norm(numeric + grad)
    assert rel < 1e-7


@pytest.mark.parametrize("block_size", [1, 7, 128, 1000, 4096])
def test_blocked_sums_equal_ngs_vectorized_equations(block_size):
    x = data(1001)
    theta = random_theta(64, 25)
    cost, grad = gradient.evaluate(theta, x, 25, RHO, LAM, BETA, block_size)
    ref_cost, ref_grad = objective.reference(theta, x, 25, RHO, LAM, BETA)
    assert cost == pytest.approx(ref_cost, rel=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-9, atol=1e-12 * np.abs(ref_grad).max())


def test_float32_compute_stays_close_to_float64():
    """float32 products, float64 sums: cost within 1e-6 and gradient within 1e-4, relative."""
    x = data(3000)
    theta = random_theta(64, 25)
    cost64, grad64 = gradient.evaluate(theta, x, 25, RHO, LAM, BETA, 128, np.float64)
    cost32, grad32 = gradient.evaluate(theta, x, 25, RHO, LAM, BETA, 128, np.float32)
    assert cost32 == pytest.approx(cost64, rel=1e-6)
    assert np.linalg.norm(grad32 - grad64) < 1e-4 * np.linalg.norm(grad64)


def test_block_sums_add_exactly_in_any_order_and_grouping():
    """Whatever ranks hold which blocks and in what order they add, totals are bitwise equal."""
    x = data(1500)
    v, h, block = 64, 25, 100
    full, tail = objective.to_blocks(x[:1450], block)  # 14 blocks and a short one
    kernel = BlockKernel(v, h, block)
    kernel.set_params(random_theta(v, h), 1450, np.abs(x).max())
    per_block = []
    for one in [*full, *tail]:
        units = np.zeros(kernel.sums.size)
        kernel.accumulate(one[None], units)
        per_block.append(units)
    in_order = np.sum(per_block, axis=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        cuts = np.sort(rng.choice(np.arange(1, len(per_block)), size=3, replace=False))
        groups = [np.sum(g, axis=0) for g in np.split(np.array(per_block), cuts)]
        assert np.array_equal(np.sum(groups[::-1], axis=0), in_order)
        shuffled = rng.permutation(len(per_block))
        assert np.array_equal(np.sum(np.array(per_block)[shuffled], axis=0), in_order)
    assert np.all(in_order == np.rint(in_order))  # whole grid steps


def test_sparsity_pushes_mean_activation_toward_rho():
    """The KL term is zero at rho_hat = rho and its gradient moves b1 toward it."""
    x = data(500)
    v, h = 64, 25
    theta = np.zeros(objective.n_params(v, h))  # all a2 = 0.5 > rho
    _, grad = gradient.evaluate(theta, x, h, RHO, 0.0, BETA, 128)
    _, _, gb1, _ = objective.unpack(grad, v, h)
    assert np.all(gb1 > 0)  # descent lowers the hidden biases, so activations fall toward rho
