"""Ground truth for the 2:4 prox solvers: the objective, its brute-force global minimum, and
hypothesis strategies for the groups that have broken solvers before."""

from __future__ import annotations

import itertools

import torch
from hypothesis import strategies as st


def objective(w: torch.Tensor, z: torch.Tensor, lam: float) -> torch.Tensor:
    """1/2 ||w - z||^2 + lam R(w), per group of 4, in float64."""
    w, z = w.double().reshape(-1, 4), z.double().reshape(-1, 4)
    a = w.abs()
    r = a[:, 0] * a[:, 1] * (a[:, 2] + a[:, 3]) + a[:, 2] * a[:, 3] * (a[:, 0] + a[:, 1])
    return 0.5 * ((w - z) ** 2).sum(1) + lam * r


def brute_force_minimum(z: torch.Tensor, lam: float, points: int = 21) -> float:
    """Global minimum of one group's objective: a 4-D grid over [0, |z_i|] (the minimiser
    lies there, sign-matched), then exact coordinate descent from the best grid points."""
    a = z.double().abs()
    axes = [torch.linspace(0, float(v), points, dtype=torch.float64) for v in a]
    grid = torch.cartesian_prod(*axes)
    values = objective(grid, a.expand_as(grid), lam)
    best = float(values.min())
    w = grid[values.argsort()[:8]].clone()
    for _ in range(20000):
        before = w.clone()
        for k in range(4):
            others = [i for i in range(4) if i != k]
            pairs = sum(w[:, i] * w[:, j] for i, j in itertools.combinations(others, 2))
            w[:, k] = (a[k] - lam * pairs).clamp_min(0)
        if float((w - before).abs().sum()) <= 1e-15 * float(a.max()):
            break
    best = min(best, float(objective(w, a.expand_as(w), lam).min()))
    return best


def tolerance(z: torch.Tensor) -> float:
    return 1e-6 * max(0.5 * float((z.double() ** 2).sum()), 1e-12)


def assert_rows_reach_the_minimum(result: torch.Tensor, z: torch.Tensor, lam: float) -> None:
    """Every row (one group of 4) of `result` is within tolerance of its brute-force minimum."""
    for row in range(z.shape[0]):
        found = float(objective(result[row], z[row], lam))
        assert found <= brute_force_minimum(z[row], lam) + tolerance(z[row]), (row, lam)


magnitudes = st.floats(min_value=1e-8, max_value=1e3, allow_nan=False, allow_infinity=False)
signed = st.builds(lambda m, s, zero: 0.0 if zero else m * s, magnitudes, st.sampled_from([-1.0, 1.0]), st.booleans())
lams = st.floats(min_value=1e-4, max_value=1e3)


def adversarial_groups():
    """Ties, zeros, all-equal groups, one large entry, and mixed scales."""
    return st.one_of(
        st.lists(signed, min_size=4, max_size=4),
        st.builds(lambda v, s: [v * x for x in s], magnitudes, st.lists(st.sampled_from([-1.0, 1.0]), min_size=4, max_size=4)),
        st.builds(lambda v, u: [v, u, u, u], magnitudes, magnitudes),
        st.builds(lambda big, small: [big, small, -small, small * 0.5], magnitudes, magnitudes),
        st.builds(lambda v, u: [v, v, u, 0.0], magnitudes, magnitudes),
    )
