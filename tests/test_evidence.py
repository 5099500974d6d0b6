"""The promotion tests' statistics against SciPy's (service/core/evidence.py)."""

from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import binomtest, norm

from service.core.evidence import Paired, Tally, mcnemar, two_proportions

counts = st.integers(min_value=0, max_value=3000)


@given(counts, counts, counts, counts)
def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_pairs(both_right, stable_only, candidate_only, both_wrong):
    paired = Paired(both_right, stable_only, candidate_only, both_wrong)
    discordant = stable_only + candidate_only
    expected = binomtest(candidate_only, discordant, 0.5).pvalue if discordant else 1.0
    assert abs(mcnemar(paired) - expected) < 1e-9
    assert paired.labelled == both_right + stable_only + candidate_only + both_wrong


@given(st.integers(1, 5000), st.integers(1, 5000), st.floats(0, 1), st.floats(0, 1))
def test_two_proportions_is_the_pooled_z_test(stable_n, candidate_n, stable_rate, candidate_rate):
    stable = Tally(stable_n, round(stable_n * stable_rate))
    candidate = Tally(candidate_n, round(candidate_n * candidate_rate))
    pooled = (stable.correct + candidate.correct) / (stable_n + candidate_n)
    spread = pooled * (1 - pooled) * (1 / stable_n + 1 / candidate_n)
    if spread == 0:
        expected = 1.0
    else:
        expected = 2 * norm.sf(abs(candidate.accuracy - stable.accuracy) / spread ** 0.5)
    assert abs(two_proportions(stable, candidate) - expected) < 1e-9


def test_no_evidence_is_no_difference():
    assert mcnemar(Paired(50, 0, 0, 3)) == 1.0
    assert two_proportions(Tally(), Tally(10, 9)) == 1.0
    assert Tally().accuracy is None
    assert two_proportions(Tally(1000, 800), Tally(1000, 900)) < 1e-9
