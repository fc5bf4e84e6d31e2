"""The Ω basis maths alone: growth, projection, truncation, residual energy, IVF decisions."""

from __future__ import annotations

import numpy as np
import pytest

from geoloc.store.omega_basis import (
    IVF_RETRAIN_FACTOR,
    GrowingBasis,
    ivf_due,
    ivf_nlist,
    ivf_training_rows,
)

from .helpers import unit

D = 300


def test_growth_keeps_every_vector_exactly() -> None:
    rng = np.random.default_rng(0)
    basis = GrowingBasis(D, target_dim=16, max_dim=64)
    assert basis.dim == 0 and basis.dirty
    x = unit(rng, 40, D)
    stored = np.zeros((0, 0), np.float32)
    for s in range(0, 40, 10):
        step = basis.fold(x[s : s + 10], frozen=False)
        assert step.grown and step.codes.shape == (10, basis.dim)
        stored = np.pad(stored, ((0, 0), (0, basis.dim - stored.shape[1])))
        stored = np.concatenate([stored, step.codes])
    assert basis.dim == 40 and not basis.too_wide and basis.within_tolerance
    np.testing.assert_allclose(basis.basis @ basis.basis.T, np.eye(40), atol=1e-5)
    np.testing.assert_allclose(stored @ basis.basis, x, atol=1e-5)  # earlier codes padded: exact
    np.testing.assert_allclose(basis.moment, stored.T.astype(np.float64) @ stored, atol=1e-4)
    np.testing.assert_allclose(basis.project(x), stored, atol=1e-5)


def test_vectors_inside_the_span_are_projected_without_growth() -> None:
    rng = np.random.default_rng(1)
    basis = GrowingBasis(D, target_dim=8, max_dim=32)
    x = unit(rng, 6, D)
    basis.fold(x, frozen=False)
    basis.dirty = False
    moment = basis.moment.copy()
    y = rng.standard_normal((5, 6)).astype(np.float32) @ x  # combinations: inside the span
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    step = basis.fold(y, frozen=False)
    assert not step.grown and basis.dim == 6 and basis.within_tolerance
    np.testing.assert_allclose(step.codes @ basis.basis, y, atol=1e-5)
    np.testing.assert_allclose(basis.moment - moment, step.codes.T @ step.codes, atol=1e-5)
    # a frozen basis records what it misses instead of growing
    outside = unit(rng, 3, D)
    step = basis.fold(outside, frozen=True)
    assert not step.grown and basis.dim == 6
    assert not basis.within_tolerance and basis.residual_sum > 2.5  # nearly all of 3 vectors
    assert basis.residual_n == 6 + 5 + 3
    assert basis.residual_energy == pytest.approx(basis.residual_sum / 14)


def test_truncation_keeps_the_principal_directions_and_rotates_codes() -> None:
    rng = np.random.default_rng(2)
    rank, n = 12, 120
    sub = unit(rng, rank, D)
    x = rng.standard_normal((n, rank)).astype(np.float32) @ sub
    x += 0.01 * unit(rng, n, D)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    basis = GrowingBasis(D, target_dim=16, max_dim=48)
    stored = np.zeros((0, 0), np.float32)
    for s in range(0, n, 30):
        step = basis.fold(x[s : s + 30], frozen=False)
        stored = np.pad(stored, ((0, 0), (0, basis.dim - stored.shape[1])))
        stored = np.concatenate([stored, step.codes])
        if basis.too_wide:
            before = basis.residual_sum
            stored = basis.truncate(stored)
            assert basis.dim == 16 and basis.fit_count == stored.shape[0]
            assert basis.residual_sum > before  # the dropped (noise) energy is recorded
    assert basis.dim <= 48 and not basis.within_tolerance
    np.testing.assert_allclose(basis.basis @ basis.basis.T, np.eye(basis.dim), atol=1e-4)
    # the rank-12 signal survives truncation: reconstructions stay close, codes match projections
    err = np.linalg.norm(stored @ basis.basis - x, axis=1)
    assert float(err.max()) < 0.05
    np.testing.assert_allclose(basis.project(x), stored, atol=0.05)
    assert basis.residual_energy < 0.01


def test_ivf_decisions() -> None:
    assert not ivf_due("flat", 100, ivf_threshold=100, fit_count=0)
    assert ivf_due("flat", 101, ivf_threshold=100, fit_count=0)
    assert not ivf_due("ivf", IVF_RETRAIN_FACTOR * 150, ivf_threshold=100, fit_count=150)
    assert ivf_due("ivf", IVF_RETRAIN_FACTOR * 150 + 1, ivf_threshold=100, fit_count=150)
    assert ivf_nlist(1) == 1 and ivf_nlist(390) == 10 and ivf_nlist(1_000_000) == 4000
    rows = ivf_training_rows(1000, 4)
    assert rows.size == 256 and np.unique(rows).size == 256 and rows.max() < 1000
    np.testing.assert_array_equal(rows, ivf_training_rows(1000, 4))  # seeded: reproducible
    assert ivf_training_rows(100, 4).size == 100


def _norm(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("case", ["near_duplicates", "ill_conditioned", "dependent_rows"])
def test_hard_chunks_keep_the_basis_orthonormal_and_the_codes_exact(case: str) -> None:
    """Chunks that exercise each safeguard of the growth: residuals short against their
    vectors (second projection), an ill-conditioned residual Gram matrix (second whitening)
    and rows that add no direction (rank cut)."""
    rng = np.random.default_rng(7)
    basis = GrowingBasis(D, target_dim=64, max_dim=200)
    first = unit(rng, 30, D)
    stored = basis.fold(first, frozen=False).codes
    if case == "near_duplicates":  # residual energy ~1e-4 of each vector
        chunk = _norm(first[:20] + 1e-2 * unit(rng, 20, D))
    elif case == "ill_conditioned":  # residual directions of energies 1 .. 1e-5
        scales = np.logspace(0, -2.5, 20)[:, None]
        chunk = _norm(first[:20] + scales * unit(rng, 20, D))
    else:  # 10 new directions, then 10 combinations of them and of stored vectors
        new = unit(rng, 10, D)
        mix = rng.standard_normal((10, 10)) @ new + rng.standard_normal((10, 30)) @ first
        chunk = _norm(np.concatenate([new, mix]))
    step = basis.fold(chunk, frozen=False)
    assert step.grown
    if case == "dependent_rows":
        assert basis.dim == 40
    stored = np.concatenate(
        [np.pad(stored, ((0, 0), (0, basis.dim - stored.shape[1]))), step.codes]
    )
    b = basis.basis
    np.testing.assert_allclose(b @ b.T, np.eye(basis.dim), atol=2e-5)
    np.testing.assert_allclose(stored @ b, np.concatenate([first, chunk]), atol=2e-5)
    assert basis.within_tolerance


def test_basis_freezes_at_the_first_truncation_past_freeze_after() -> None:
    rng = np.random.default_rng(7)
    basis = GrowingBasis(D, target_dim=8, max_dim=16, freeze_after=30)
    x = unit(rng, 80, D)
    stored = np.zeros((0, 0), np.float32)
    fits = []
    for s in range(0, 60, 10):
        step = basis.fold(x[s : s + 10], frozen=basis.frozen)
        if step.grown:
            stored = np.pad(stored, ((0, 0), (0, basis.dim - stored.shape[1])))
        stored = np.concatenate([stored, step.codes])
        if basis.too_wide:
            stored = basis.truncate(stored)
            fits.append(basis.fit_count)
    # truncations at 20 and 30 vectors seen (16 + 10 > max_dim); frozen from the second on
    assert fits == [20, 30] and basis.frozen and basis.dim == 8
    frozen_rows = basis.basis.copy()
    before_sum, before_n = basis.residual_sum, basis.residual_n
    step = basis.fold(x[60:80], frozen=basis.frozen)
    assert not step.grown and basis.dim == 8
    np.testing.assert_array_equal(basis.basis, frozen_rows)
    np.testing.assert_allclose(step.codes, x[60:80] @ frozen_rows.T, atol=1e-6)
    # residual energy from the code norms equals the explicit residual's
    resid = x[60:80] - step.codes @ frozen_rows
    expected = np.einsum("ij,ij->i", resid, resid).sum()
    assert basis.residual_sum - before_sum == pytest.approx(expected, rel=1e-4)
    assert basis.residual_n - before_n == 20


def test_freeze_after_zero_keeps_the_basis_growing() -> None:
    rng = np.random.default_rng(8)
    basis = GrowingBasis(D, target_dim=8, max_dim=16, freeze_after=0)
    stored = np.zeros((0, 0), np.float32)
    for _ in range(6):
        step = basis.fold(unit(rng, 10, D), frozen=basis.frozen)
        assert step.grown  # random vectors always leave the span
        stored = np.pad(stored, ((0, 0), (0, basis.dim - stored.shape[1])))
        stored = np.concatenate([stored, step.codes])
        if basis.too_wide:
            stored = basis.truncate(stored)
    assert not basis.frozen and basis.fit_count == 60
