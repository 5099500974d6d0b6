"""The Fréchet distance on cases with known answers, the latent interpolation path, and the
choice of the default truncation ψ."""

import numpy as np
import pytest

from tests.conftest import unavailable
from training.evaluate_gan import GANEvaluation, card_metrics, choose_psi, slerp
from training.gan_fid import feature_statistics, fid, frechet_distance


def test_identical_sets_are_at_distance_zero():
    features = np.random.default_rng(0).normal(size=(2000, 16))
    assert fid(features, features) == pytest.approx(0.0, abs=1e-6)


def test_shifted_gaussian_samples_match_the_closed_form():
    # Diagonal Gaussians: FID = ‖μa − μb‖² + Σ (σa − σb)².
    rng = np.random.default_rng(1)
    mean_b, sigma_b = np.linspace(-1, 1, 8), np.linspace(0.5, 2.0, 8)
    a = rng.normal(size=(50_000, 8))
    b = mean_b + sigma_b * rng.normal(size=(50_000, 8))
    expected = np.sum(mean_b**2) + np.sum((1 - sigma_b) ** 2)
    assert fid(a, b) == pytest.approx(expected, rel=0.02)


def test_exact_moments_match_a_general_matrix_square_root():
    try:
        from scipy import linalg
    except ImportError:
        unavailable("scipy is not installed: make install")
    rng = np.random.default_rng(2)
    factors = rng.normal(size=(2, 6, 6))
    cov_a, cov_b = (f @ f.T + 0.1 * np.eye(6) for f in factors)
    mean_a, mean_b = rng.normal(size=(2, 6))
    cross = linalg.sqrtm(cov_a @ cov_b).real
    expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * cross)
    assert frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-6)


def test_distance_is_symmetric_and_grows_with_the_shift():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5000, 4))
    near, far = a + 0.1, a + 1.0
    assert fid(a, near) == pytest.approx(fid(near, a), rel=1e-6)
    assert fid(a, near) < fid(a, far)
    assert fid(a, far) == pytest.approx(4.0, rel=1e-3)  # a pure shift: ‖(1, 1, 1, 1)‖²


def test_feature_statistics_are_mean_and_covariance():
    features = np.array([[0.0, 0.0], [2.0, 2.0], [4.0, 4.0]])
    mean, cov = feature_statistics(features)
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(cov, [[4.0, 4.0], [4.0, 4.0]])


def test_slerp_runs_along_the_sphere_between_its_ends():
    rng = np.random.default_rng(4)
    start, end = rng.normal(size=(2, 64))
    end *= np.linalg.norm(start) / np.linalg.norm(end)
    path = slerp(start, end, np.linspace(0, 1, 7))
    np.testing.assert_allclose(path[0], start, atol=1e-12)
    np.testing.assert_allclose(path[-1], end, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), np.linalg.norm(start), rtol=1e-9)


def _measured(consistencies: dict[float, float | None]) -> dict[float, GANEvaluation]:
    """Evaluations whose FID grows as ψ falls (less variety), with these consistencies."""
    return {psi: GANEvaluation(psi, fid=10 - 5 * psi, fid_floor=0.5, class_consistency=consistency,
                               per_class_consistency=None, evaluator_accuracy=0.9, samples=100)
            for psi, consistency in consistencies.items()}


def test_the_default_psi_is_the_largest_that_reaches_the_target():
    measured = _measured({1.0: 0.93, 0.9: 0.96, 0.8: 0.975, 0.7: 0.98, 0.6: 0.97})
    assert choose_psi(measured, target=0.97) == 0.8  # not 0.7: no more variety given up than needed
    assert choose_psi(measured, target=0.9) == 1.0
    assert choose_psi(measured, target=0.99) == 0.7  # none reaches it: the most consistent
    assert choose_psi(_measured({1.0: None, 0.5: None})) == 1.0  # unconditional: the lowest FID


def test_the_card_records_every_psi_and_the_default_in_full():
    measured = _measured({1.0: 0.93123, 0.5: 0.98})
    metrics = card_metrics(measured, 0.5)
    assert metrics["psi"] == 0.5 and metrics["fid"] == 7.5 and metrics["class_consistency"] == 0.98
    assert metrics["fid_over_floor"] == 15.0
    assert metrics["by_psi"] == {"1": {"fid": 5.0, "class_consistency": 0.9312},
                                 "0.5": {"fid": 7.5, "class_consistency": 0.98}}
