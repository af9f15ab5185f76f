"""Continual-learning metrics against loops written straight from their definitions."""

import numpy as np
import pytest

from nestlearn.eval import continual as cl


def _reference(a, higher_is_better=True):
    """The definitions of the module docstring, one Python loop each, float64."""
    t = len(a)
    average = sum(a[t - 1][j] for j in range(t)) / t
    incremental = sum(sum(a[i][j] for j in range(i + 1)) / (i + 1) for i in range(t)) / t
    forgets = []
    for j in range(t - 1):
        earlier = [a[i][j] for i in range(j, t - 1)]
        forgets.append(
            max(earlier) - a[t - 1][j] if higher_is_better else a[t - 1][j] - min(earlier)
        )
    forgetting = sum(forgets) / len(forgets) if forgets else 0.0
    bwt = sum(a[t - 1][j] - a[j][j] for j in range(t - 1)) / (t - 1) if t > 1 else 0.0
    diag = [a[i][i] for i in range(t)]
    return average, incremental, forgets, forgetting, bwt, diag


@pytest.mark.parametrize("t", [1, 2, 5, 7])
@pytest.mark.parametrize("higher_is_better", [True, False])
def test_summary_matches_the_definitions_on_random_matrices(t, higher_is_better):
    rng = np.random.default_rng(t)
    a = rng.uniform(0, 1, (t, t))
    a[np.triu_indices(t, 1)] = np.nan  # tasks not seen yet: ignored
    average, incremental, forgets, forgetting, bwt, diag = _reference(a.tolist(), higher_is_better)
    got = cl.summarize(a, higher_is_better=higher_is_better)
    np.testing.assert_allclose(got.average, average, rtol=1e-12)
    np.testing.assert_allclose(got.incremental, incremental, rtol=1e-12)
    np.testing.assert_allclose(got.forgetting, forgetting, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.backward_transfer, bwt, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.just_learned, diag, rtol=1e-12)
    np.testing.assert_allclose(got.just_learned_mean, np.mean(diag), rtol=1e-12)
    np.testing.assert_allclose(
        cl.forgetting(a, higher_is_better=higher_is_better), forgets, rtol=1e-12, atol=1e-15
    )


def test_known_cases():
    keep = np.tril(np.full((4, 4), 0.9))  # learns each task to 90% and never forgets
    s = cl.summarize(keep)
    assert s.forgetting == 0.0 and s.backward_transfer == 0.0 and s.average == pytest.approx(0.9)
    # Catastrophic forgetting in a class-incremental run: only the last task survives.
    eye = np.eye(5)
    s = cl.summarize(eye)
    assert s.average == pytest.approx(0.2)
    assert s.forgetting == pytest.approx(1.0) and s.backward_transfer == pytest.approx(-1.0)
    assert s.just_learned == (1.0,) * 5
    # Forgetting uses the best earlier score, not the just-learned one (backward transfer does).
    a = np.array([[0.5, 0, 0], [0.8, 0.9, 0], [0.6, 0.9, 0.7]])
    np.testing.assert_allclose(cl.forgetting(a), [0.2, 0.0])
    assert cl.backward_transfer(a) == pytest.approx((0.1 + 0.0) / 2)
    # Losses: forgetting is the rise over the lowest earlier loss.
    loss = np.array([[2.0, 5, 5], [2.5, 1.8, 5], [3.0, 2.0, 1.5]])
    np.testing.assert_allclose(cl.forgetting(loss, higher_is_better=False), [1.0, 0.2])


def test_bad_matrices_name_the_problem():
    with pytest.raises(ValueError, match=r"square \[T, T\].*\(2, 3\)"):
        cl.summarize(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"shape \(0, 0\)"):
        cl.average_accuracy(np.zeros((0, 0)))
    bad = np.eye(3)
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite .* \[\(2, 0\)\]"):
        cl.forgetting(bad)
    with pytest.raises(ValueError, match="accuracy"):
        cl.check_matrix(np.zeros(3), name="accuracy")


def test_locate_forgetting_by_hand():
    a = np.array([[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.4, 0.3, 0.9]])
    r = np.full((3, 2, 3), np.nan)
    r[1, :, 0] = [0.9, 0.5]  # group 0 restores task 0 fully, group 1 not at all
    r[2, :, :2] = [[0.4, 0.8], [0.3, 0.3]]
    step, rec = cl.locate_forgetting(a, r)
    # pairs (1,0), (2,0), (2,1): drops 0.4, 0.1, 0.5
    assert step == pytest.approx((0.4 + 0.1 + 0.5) / 3)
    np.testing.assert_allclose(rec, [(0.4 + 0.0 + 0.5) / 3, (0.0 - 0.1 + 0.0) / 3])
    # losses: the same numbers with the sign flipped
    step_l, rec_l = cl.locate_forgetting(-a, -r, higher_is_better=False)
    assert step_l == pytest.approx(step)
    np.testing.assert_allclose(rec_l, rec)
    with pytest.raises(ValueError, match="reset"):
        cl.locate_forgetting(a, r[:, :, :2])
