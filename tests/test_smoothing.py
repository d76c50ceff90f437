"""The smoothed classifier: coverage, tightness, model-call accounting, abstentions, bad input."""

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import ndtr
from scipy.stats import binom

import hybridcert as hc
from hybridcert.noise import AbsorbingMask, InPlaceSuffix, UniformSubstitution
from hybridcert.record import recompute
from hybridcert.sampling import ABSTAIN
from hybridcert.smoothing import SmoothedClassifier


def analytic(threshold=0.3, keep_at_least=3):
    """Label 1 iff z_C[0] <= threshold and at least `keep_at_least` tokens equal token 0."""

    def f(tokens, cont):
        return ((cont[:, 0] <= threshold) & ((tokens == 0).sum(axis=1) >= keep_at_least)).astype(int)

    return f


def analytic_probability(sigma, beta, length, threshold=0.3, keep_at_least=3):
    """Closed form at x = (0^L, 0): P[N(0, sigma) <= t] * P[Binom(L, 1 - beta) >= k]."""
    return ndtr(threshold / sigma) * binom.sf(keep_at_least - 1, length, 1 - beta)


def test_lower_bound_covers_the_truth_in_at_least_1_minus_alpha_of_runs():
    sigma, beta, length, alpha, runs, n = 0.5, 0.2, 6, 0.05, 300, 400
    truth = analytic_probability(sigma, beta, length)
    smooth = SmoothedClassifier(analytic(), discrete_noise=UniformSubstitution(beta=beta, vocab_size=4),
                                sigma=sigma, decision="threshold", tau=0.01, batch_size=400)
    misses = sum(
        smooth.certify(np.zeros(length, dtype=int), np.zeros(2), n=n, alpha=alpha,
                       random_state=seed).p_lower > truth
        for seed in range(runs)
    )
    # Misses are Binomial(runs, <= alpha); exceeding its 99.9% quantile would reject coverage.
    assert misses <= binom.ppf(0.999, runs, alpha)


def _worst_case_classifier(p_a, sigma, radius, beta, vocab, d):
    """The Neyman-Pearson worst case for x = 0^L, x' = 1^d 0^(L-d), x'_C = radius * e_1."""
    atoms = hc.uniform_atoms(d, beta=beta, vocab_size=vocab)
    log_rho = np.log((1 - beta) * (vocab - 1) / beta)
    a = radius / sigma
    k_values = np.rint(np.log(atoms.ratio) / log_rho)

    def clean_mass(lam):  # F(lam) for the region {k log rho + a u - a^2/2 <= lam}
        return float(np.sum(atoms.p_clean * ndtr((lam - k_values * log_rho) / a + a / 2)))

    lam = brentq(lambda t: clean_mass(t) - p_a, -200, 200, xtol=1e-14)

    def f(tokens, cont):
        k = (tokens[:, :d] == 1).sum(axis=1) - (tokens[:, :d] == 0).sum(axis=1)
        u = cont[:, 0] / sigma
        return (k * log_rho + a * u - a * a / 2 <= lam).astype(int)

    return f, atoms


@pytest.mark.parametrize("p_a,radius", [(0.9, 0.4), (0.99, 1.0)])
def test_tightness_against_the_neyman_pearson_worst_case(p_a, radius):
    sigma, beta, vocab, d, length, n = 0.5, 0.3, 3, 2, 4, 200_000
    f, atoms = _worst_case_classifier(p_a, sigma, radius, beta, vocab, d)
    smooth = SmoothedClassifier(f, discrete_noise=UniformSubstitution(beta=beta, vocab_size=vocab),
                                sigma=sigma, decision="threshold", tau=1e-6, batch_size=20_000)
    x = np.zeros(length, dtype=int)
    x_adv = x.copy()
    x_adv[:d] = 1
    at_x = smooth.certify(x, np.zeros(2), n=n, alpha=0.01, d_max=0, random_state=1)
    at_adv = smooth.certify(x_adv, np.array([radius, 0.0]), n=n, alpha=0.01, d_max=0,
                            random_state=2)
    bound = hc.worst_case_probability(p_a, sigma=sigma, atoms=atoms, radius=radius)
    for cert, truth in ((at_x, p_a), (at_adv, bound)):
        estimate = cert.count[0] / n
        # 4.5 standard errors: a correct engine fails this with probability < 1e-5.
        assert abs(estimate - truth) <= 4.5 * np.sqrt(truth * (1 - truth) / n)


def test_shared_d_spends_d_max_plus_one_times_fewer_calls():
    smooth = SmoothedClassifier(analytic(), discrete_noise=UniformSubstitution(beta=0.1, vocab_size=9),
                                sigma=0.5, random_state=0)
    x = np.zeros(12, dtype=int)
    shared = smooth.certify(x, np.zeros(2), n0=50, n=2000, alpha=0.01, d_max=8)
    looped = smooth.certify(x, np.zeros(2), n0=50, n=2000, alpha=0.01, d_max=8, protocol="per_budget")
    assert shared.model_calls == 50 + 2000
    assert looped.model_calls == 50 + 9 * 2000
    assert looped.settings["level"] == pytest.approx(0.01 / 9)
    assert looped.model_calls / shared.model_calls >= 8


def test_certificate_matches_the_core_on_its_counts():
    smooth = SmoothedClassifier(analytic(), discrete_noise=UniformSubstitution(beta=0.1, vocab_size=9),
                                sigma=0.5, decision="threshold", tau=1e-3, random_state=3)
    cert = smooth.certify(np.zeros(8, dtype=int), np.zeros(2), n=5000, alpha=0.001, d_max=4)
    p_lower = hc.stats.clopper_pearson_lower(cert.count[0], 5000, 0.001)
    assert cert.p_lower == p_lower
    for d in range(5):
        expected = hc.certified_radius(p_lower, sigma=0.5, tau=1e-3,
                                       atoms=hc.uniform_atoms(d, beta=0.1, vocab_size=9))
        assert cert.radii[d] == (expected if d <= cert.largest_budget else 0.0)
    # vocab_size declares the whole symbol space: there is no symbol outside it to write.
    assert cert.settings["attack"][0]["attacker_alphabet"] == "any"
    assert not cert.settings["attack"][0]["restricted_alphabet"]
    again = recompute(cert, alpha=0.01)
    assert again.p_lower > cert.p_lower and again.radii[0] >= cert.radii[0]
    assert recompute(cert, tau=0.5).radii[0] < cert.radii[0]
    assert cert.to_dict()["radii"] == list(cert.radii)


def test_abstaining_certificates_keep_the_counted_label_for_recompute():
    kernel = UniformSubstitution(beta=0.1, vocab_size=9)
    strict = SmoothedClassifier(analytic(), discrete_noise=kernel, sigma=0.5,
                                decision="threshold", tau=0.999, random_state=3)
    cert = strict.certify(np.zeros(8, dtype=int), np.zeros(2), n=2000, d_max=2)
    assert cert.label == ABSTAIN and cert.settings["counted_label"] == 1 and cert.n0 == 0
    # A lower tau flags it, from the same counts: the certificate of a run made at that tau.
    lenient = SmoothedClassifier(analytic(), discrete_noise=kernel, sigma=0.5,
                                 decision="threshold", tau=1e-3, random_state=3)
    direct = lenient.certify(np.zeros(8, dtype=int), np.zeros(2), n=2000, d_max=2)
    again = recompute(cert, tau=1e-3)
    assert again.label == 1 and again.radii == direct.radii and again.count == direct.count
    # Majority: the counted label is the top of the n0 selection samples, kept on abstention.
    vote = SmoothedClassifier(analytic(), discrete_noise=kernel, sigma=0.5, random_state=3)
    cert = vote.certify(np.zeros(8, dtype=int), np.zeros(2), n0=30, n=2000, d_max=2)
    assert cert.settings["counted_label"] == cert.label == 1


def test_abstentions_and_exceptions_count_against_the_label():
    def flaky(tokens, cont):  # raises on a masked first token, cannot read a masked second one
        if (tokens[:, 0] == -1).any():
            raise RuntimeError("CUDA out of memory")
        labels = np.ones(len(tokens), dtype=int)
        labels[tokens[:, 1] == -1] = ABSTAIN  # "unparseable output"
        return labels

    smooth = SmoothedClassifier(flaky, discrete_noise=AbsorbingMask(beta=0.5, mask_id=-1),
                                sigma=0.25, decision="threshold", tau=0.5, batch_size=1000,
                                on_model_error="flag", max_error_rate=1.0)
    cert = smooth.certify(np.arange(5), np.zeros(3), n=1000, alpha=0.01, random_state=0)
    tokens, _ = smooth.sample(np.arange(5), np.zeros(3), 1000, random_state=0)  # the same draw
    raising, unreadable = tokens[:, 0] == -1, tokens[:, 1] == -1
    # Each sample keeps its own label: the raising ones are flagged, their batch-mates are not.
    assert cert.count[0] == int((raising | ~unreadable).sum())
    assert cert.errors == int(raising.sum()) and 400 < cert.errors < 600
    assert cert.abstentions == int((~raising & unreadable).sum())
    assert "CUDA out of memory" in cert.first_error


@pytest.mark.parametrize("kwargs,match", [
    (dict(x_discrete=np.array([], dtype=int)), "must not be empty"),
    (dict(x_discrete=np.array([0.5, 1.0])), "integer token ids"),
    (dict(x_discrete=np.zeros((2, 3), dtype=int)), "1-D sequence"),
    (dict(x_continuous=np.array([np.nan, 0.0])), "finite"),
    (dict(x_continuous=np.array([1, 2])), "float array"),
    (dict(d_max=7), r"d_max \(7\) exceeds the attackable positions \(6\)"),
    (dict(n0=0), "n0 must be an integer >= 1"),
    (dict(n=0), "n must be an integer >= 1"),
    (dict(alpha=0.0), r"alpha must be a number in the open interval \(0, 1\)"),
    (dict(protocol="loop"), "protocol must be one of"),
])
def test_bad_input_is_named(kwargs, match):
    smooth = SmoothedClassifier(analytic(), discrete_noise=UniformSubstitution(beta=0.1, vocab_size=9),
                                sigma=0.5)
    args = dict(x_discrete=np.zeros(6, dtype=int), x_continuous=np.zeros(2), n0=10, n=10)
    args.update(kwargs)
    x_d, x_c = args.pop("x_discrete"), args.pop("x_continuous")
    with pytest.raises(ValueError, match=match):
        smooth.certify(x_d, x_c, **args)


def test_a_model_returning_the_wrong_number_of_labels_is_an_error():
    smooth = SmoothedClassifier(lambda t, c: np.ones(3, dtype=int), sigma=0.5,
                                discrete_noise=UniformSubstitution(beta=0.1, vocab_size=9))
    with pytest.raises(ValueError, match="one integer label per sample"):
        smooth.certify(np.zeros(4, dtype=int), np.zeros(2), n0=10, n=10)
    bad_label = SmoothedClassifier(lambda t, c: np.full(len(t), 7), sigma=0.5,
                                   discrete_noise=UniformSubstitution(beta=0.1, vocab_size=9))
    with pytest.raises(ValueError, match="label outside"):
        bad_label.certify(np.zeros(4, dtype=int), np.zeros(2), n0=10, n=10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sigma=0.0), "sigma must be positive"),
    (dict(decision="vote"), "decision must be"),
    (dict(decision="threshold", tau=1.0), r"tau must lie in the open interval"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
])
def test_bad_configuration(kwargs, match):
    args = dict(discrete_noise=UniformSubstitution(beta=0.1, vocab_size=9), sigma=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SmoothedClassifier(analytic(), **args)


def test_predict_majority_and_threshold():
    smooth = SmoothedClassifier(analytic(threshold=2.0, keep_at_least=0), sigma=0.5,
                                discrete_noise=UniformSubstitution(beta=0.1, vocab_size=9))
    assert smooth.predict(np.zeros(4, dtype=int), np.zeros(2), n=200, random_state=0) == 1
    coin = SmoothedClassifier(analytic(threshold=0.0, keep_at_least=0), sigma=0.5,
                              discrete_noise=UniformSubstitution(beta=0.1, vocab_size=9))
    assert coin.predict(np.zeros(4, dtype=int), np.zeros(2), n=200, random_state=0) == ABSTAIN
    filt = SmoothedClassifier(analytic(threshold=-3.0, keep_at_least=0), sigma=0.5,
                              discrete_noise=UniformSubstitution(beta=0.1, vocab_size=9),
                              decision="threshold", tau=0.2)
    assert filt.predict(np.zeros(4, dtype=int), np.zeros(2), n=500, random_state=0) == 0


def test_seeded_runs_repeat_and_suffix_threat():
    smooth = SmoothedClassifier(analytic(), discrete_noise=UniformSubstitution(beta=0.2, vocab_size=5),
                                sigma=0.5, threat=InPlaceSuffix(3), decision="threshold", tau=0.01)
    a = smooth.certify(np.zeros(8, dtype=int), np.zeros(2), n=1000, random_state=11)
    b = smooth.certify(np.zeros(8, dtype=int), np.zeros(2), n=1000, random_state=11)
    assert a == b and len(a.radii) == 4  # d_max defaults to the 3 attackable positions


def test_gaussian_only_and_discrete_only():
    image_only = SmoothedClassifier(lambda t, c: (c[:, 0] < 1).astype(int), discrete_noise=None,
                                    sigma=0.5, random_state=0)
    cert = image_only.certify(None, np.zeros(2), n=2000, alpha=0.01)
    assert cert.radii == (hc.gaussian_radius(cert.p_lower, sigma=0.5),)
    text_only = SmoothedClassifier(lambda t, c: (t == 0).sum(axis=1).__ge__(1).astype(int),
                                   discrete_noise=UniformSubstitution(beta=0.2, vocab_size=5),
                                   sigma=None, random_state=0)
    cert = text_only.certify(np.zeros(6, dtype=int), None, n=2000, alpha=0.01, d_max=3)
    assert all(r == 0.0 for r in cert.radii) and cert.largest_budget >= 1


def test_torch_inputs_reach_the_model_as_tensors():
    torch = pytest.importorskip("torch")
    seen = {}

    def model(tokens, images):
        seen["types"] = (type(tokens), type(images))
        return (images.mean(dim=(1, 2)) < 0.5).long()

    smooth = SmoothedClassifier(model, discrete_noise=UniformSubstitution(beta=0.2, vocab_size=30),
                                sigma=0.25, clamp=(0.0, 1.0), random_state=0)
    cert = smooth.certify(torch.arange(5), torch.full((4, 4), 0.2), n0=20, n=500, alpha=0.01)
    assert seen["types"] == (torch.Tensor, torch.Tensor)
    assert cert.label == 1 and cert.radii[0] > 0
