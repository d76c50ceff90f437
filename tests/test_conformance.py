"""Conformance: every certified claim holds for the function the library evaluates.

Each test certifies an input through the public API, builds attacked inputs
within the certified budgets with the same API (the threat region's
``discrete_distance`` says they are within budget), moves the continuous part
by the certified radius, and measures the attacked smoothed probability with
``estimate``: a Clopper-Pearson upper bound at level 1e-6 below ``tau`` would
be a broken claim. Two kinds of base classifier attack each configuration:

- natural ones: a keyword allow-list filter (flag unless the keyword shows),
  and an "intact" filter that reacts to how much of the region the noise
  touched (it catches a certificate computed from another noise region);
- the Neyman-Pearson worst case for the attacked pair: flag iff the joint
  likelihood ratio of the noisy sample is below a threshold, the classifier
  that makes the certificate tight.

On the code before this suite, the append-only threat, the per-budget
protocol with a suffix, the restricted alphabet's default attacker and the
MMCert-style pixels all fail here.
"""

from __future__ import annotations

import numpy as np
import pytest

import hybridcert as hc
from hybridcert.baselines import MMCertSmoother
from hybridcert.noise import (
    AbsorbingMask,
    AppendOnly,
    CategoricalSubstitution,
    InPlaceSuffix,
    L0Anywhere,
    UniformSubstitution,
)

SIGMA, N_CERT, N_EVAL, LEVEL = 0.5, 20_000, 40_000, 1e-6
IMAGE = np.full(4, 0.6)
DOWN = -np.ones(4) / 2.0  # unit vector that lowers the mean, the filters' continuous feature
KEYWORD = 3

KERNELS = {
    "uniform": lambda: UniformSubstitution(0.25, vocab_size=50),
    # The keyword lies outside the noise alphabet: the default attacker may write it.
    "restricted": lambda: UniformSubstitution(0.25, alphabet=np.arange(10, 60)),
    "absorbing": lambda: AbsorbingMask(0.5, mask_id=99),
}
THREATS = {
    "l0": lambda: L0Anywhere(),
    "suffix": lambda: InPlaceSuffix(4),
    "append": lambda: AppendOnly(4, filler=10),
}
CLEAN_TOKENS = np.array([11, 12, 13, 14, 15, 16, 17, 18])


def clean_input(threat):
    return hc.AppendInput(CLEAN_TOKENS[:6]) if isinstance(threat, AppendOnly) else CLEAN_TOKENS


def attacked_inputs(threat, x, d_max, symbol=KEYWORD):
    """The natural attack: ``symbol`` written at ``d`` attackable positions, for d = 0..d_max."""
    out = []
    for d in range(d_max + 1):
        if isinstance(threat, AppendOnly):
            out.append(hc.AppendInput(x.trusted, [symbol] * d))
            continue
        adv = x.copy()
        # The suffix's first positions, not its last: the published per-budget loop noised
        # only the last d positions, and a change before them went unnoticed.
        first = x.size - threat.length if isinstance(threat, InPlaceSuffix) else 0
        adv[first:first + d] = symbol
        out.append(adv)
    return out


def keyword_filter(tokens, cont):
    """Flag (1) unless the allow-list keyword shows anywhere, and only bright inputs."""
    return ((tokens != KEYWORD).all(axis=1) & (cont.mean(axis=1) > 0.3)).astype(int)


def intact_filter(smoothed, x):
    """Flag iff at most the typical number of noised positions differ from x (and bright)."""
    seq, mask = smoothed.threat.apply(x)
    typical = int(np.ceil(smoothed.discrete_noise.beta * mask.sum()))

    def f(tokens, cont):
        changed = (tokens[:, mask] != seq[mask]).sum(axis=1)
        return ((changed <= typical) & (cont.mean(axis=1) > 0.3)).astype(int)

    return f


def log_q(kernel, z, s):
    """``log q(z | s)`` of one noised position, vectorised over samples ``z`` (symbol ``s``)."""
    keep = np.log1p(-kernel.beta)
    with np.errstate(divide="ignore"):
        if isinstance(kernel, AbsorbingMask):
            return np.where(z == s, keep, np.where(z == kernel.mask_id, np.log(kernel.beta), -np.inf))
        if isinstance(kernel, UniformSubstitution):
            alphabet = kernel._sorted if kernel._sorted is not None else np.arange(kernel.vocab_size)
            s_in = np.isin(s, alphabet)
            other = np.log(kernel.beta / (kernel.vocab_size - 1 if s_in else kernel.vocab_size))
            return np.where(z == s, keep, np.where(np.isin(z, alphabet), other, -np.inf))
    raise TypeError(kernel)


def worst_case_filter(smoothed, x, x_adv, shift, p_clean, seed=0):
    """The Neyman-Pearson worst case for (x, x_adv, shift): flag iff the likelihood ratio is low.

    Its threshold is set so that it flags about ``p_clean`` of the noisy samples at ``x``.
    """
    seq, _ = smoothed.threat.apply(x)
    adv, _ = smoothed.threat.apply(x_adv)
    changed = np.flatnonzero(seq != adv)
    kernel = smoothed.discrete_noise

    def log_ratio(tokens, cont):
        lr = (cont - IMAGE) @ shift / SIGMA**2 - shift @ shift / (2 * SIGMA**2)
        for i in changed:
            per = kernel.arities[i] if isinstance(kernel, CategoricalSubstitution) else None
            if per is None:
                lr = lr + log_q(kernel, tokens[:, i], adv[i]) - log_q(kernel, tokens[:, i], seq[i])
            else:
                lr = lr + _log_q_field(kernel.beta, per, tokens[:, i], adv[i]) \
                    - _log_q_field(kernel.beta, per, tokens[:, i], seq[i])
        return lr

    tokens, cont = smoothed.sample(x, IMAGE, 40_000, random_state=seed)
    with np.errstate(invalid="ignore"):
        threshold = np.quantile(log_ratio(tokens, cont), p_clean)

    def f(tokens, cont):
        with np.errstate(invalid="ignore"):
            return (log_ratio(tokens, cont) <= threshold).astype(int)

    return f


def _log_q_field(beta, arity, z, s):
    return np.where(z == s, np.log1p(-beta), np.log(beta / (arity - 1)))


def claims_hold(smoothed, x, attacked, *, protocol="shared", min_budget=0, seed=0):
    """Certify ``x``, then attack every certified budget at its certified radius."""
    d_max = len(attacked) - 1
    cert = smoothed.certify(x, IMAGE, n=N_CERT, alpha=1e-3, d_max=d_max, protocol=protocol,
                            random_state=seed)
    assert cert.largest_budget >= min_budget, f"vacuous test: {cert}"
    for d in range(cert.largest_budget + 1):
        assert smoothed.discrete_distance(x, attacked[d]) == d
        radius = cert.radius(d)
        assert np.isfinite(radius)
        est = smoothed.estimate(attacked[d], IMAGE + radius * DOWN, n=N_EVAL, alpha=LEVEL,
                                random_state=seed + 1 + d)
        assert est.upper >= smoothed.tau, (
            f"claim (d={d}, r={radius:.4f}) beaten: p_A(x') <= {est.upper:.3g} < tau = "
            f"{smoothed.tau} ({cert.settings['threat']}, {cert.settings['kernel']}, {protocol})")
    return cert


def make(model, kernel, threat, tau=0.05):
    return hc.SmoothedClassifier(model, discrete_noise=kernel, sigma=SIGMA, threat=threat,
                                 decision="threshold", target_label=1, tau=tau,
                                 batch_size=N_EVAL)


CASES = [(k, t, p) for k in KERNELS for t in THREATS for p in ("shared", "per_budget")]


@pytest.mark.parametrize("kernel_name,threat_name,protocol", CASES)
def test_keyword_filter_cannot_beat_a_claim(kernel_name, threat_name, protocol):
    threat = THREATS[threat_name]()
    x = clean_input(threat)
    smoothed = make(keyword_filter, KERNELS[kernel_name](), threat)
    claims_hold(smoothed, x, attacked_inputs(threat, x, 3), protocol=protocol, min_budget=1)


@pytest.mark.parametrize("kernel_name,threat_name,protocol", CASES)
def test_intact_filter_cannot_beat_a_claim(kernel_name, threat_name, protocol):
    threat = THREATS[threat_name]()
    x = clean_input(threat)
    probe = make(keyword_filter, KERNELS[kernel_name](), threat)
    smoothed = make(intact_filter(probe, x), KERNELS[kernel_name](), threat)
    claims_hold(smoothed, x, attacked_inputs(threat, x, 3), protocol=protocol)


@pytest.mark.parametrize("kernel_name,threat_name,protocol", CASES)
def test_neyman_pearson_worst_case_cannot_beat_a_claim(kernel_name, threat_name, protocol):
    threat = THREATS[threat_name]()
    x = clean_input(threat)
    attacked = attacked_inputs(threat, x, 1)
    probe = make(keyword_filter, KERNELS[kernel_name](), threat)
    model = worst_case_filter(probe, x, attacked[1], 0.3 * DOWN, p_clean=0.97)
    # tau: half the bound the certificate would give at (d = 1, r = 0.3) with p a little low,
    # so that the claim reaches about that far and a too-large claim shows.
    seq, mask = threat.apply(x)
    options = probe.discrete_noise.attack_atoms(1, seq, mask)
    bound = min(hc.worst_case_probability(0.95, sigma=SIGMA, atoms=a, radius=0.3) for a in options)
    smoothed = make(model, KERNELS[kernel_name](), threat, tau=max(bound / 2, 1e-3))
    claims_hold(smoothed, x, attacked, protocol=protocol, min_budget=1)


@pytest.mark.parametrize("protocol", ["shared", "per_budget"])
@pytest.mark.parametrize("which", ["reveal", "intact", "worst_case"])
def test_tabular_fields_cannot_beat_a_claim(protocol, which):
    arities = (8, 9, 10, 7)
    kernel = CategoricalSubstitution(0.25, arities)
    x = np.array([0, 1, 2, 3])
    attacked = [x.copy() for _ in range(4)]
    for d in range(1, 4):  # change fields 0..d-1 to another category
        attacked[d][:d] = (x[:d] + 1) % np.array(arities[:d])
    changed = attacked[3] != x

    def reveal(tokens, cont):  # flag unless a changed field shows its attacked value
        shows = (tokens[:, changed] == attacked[3][changed]).any(axis=1)
        return (~shows & (cont.mean(axis=1) > 0.0)).astype(int)

    probe = make(reveal, kernel, L0Anywhere())
    if which == "reveal":
        model, tau, budget = reveal, 0.05, 1
    elif which == "intact":
        model, tau, budget = intact_filter(probe, x), 0.05, 0
    else:
        model = worst_case_filter(probe, x, attacked[1], 0.3 * DOWN, p_clean=0.97)
        options = kernel.attack_atoms(1, x, np.ones(4, bool))
        tau = max(min(hc.worst_case_probability(0.95, sigma=SIGMA, atoms=a, radius=0.3)
                      for a in options) / 2, 1e-3)
        budget, attacked = 1, attacked[:2]
    claims_hold(make(model, kernel, L0Anywhere(), tau), x, attacked, protocol=protocol,
                min_budget=budget)


def test_restricted_alphabet_the_noise_only_assumption_is_what_an_outside_token_breaks():
    """With ``attacker_alphabet="noise"`` one token from outside the alphabet beats d = 1.

    That is why "any" is the default: typed text tokenizes outside a restricted alphabet.
    """
    alphabet = np.arange(10, 60)
    x = CLEAN_TOKENS

    def outside_filter(tokens, cont):  # flag unless a symbol outside the alphabet shows
        return np.isin(tokens, alphabet).all(axis=1).astype(int)

    attacked = attacked_inputs(L0Anywhere(), x, 1)
    assumed = make(outside_filter, UniformSubstitution(0.25, alphabet=alphabet,
                                                       attacker_alphabet="noise"), None, tau=0.5)
    cert = assumed.certify(x, IMAGE, n=N_CERT, alpha=1e-3, d_max=1, random_state=0)
    assert cert.largest_budget == 1 and cert.settings["kernel"]["attacker_alphabet"] == "noise"
    est = assumed.estimate(attacked[1], IMAGE, n=N_EVAL, alpha=LEVEL, random_state=1)
    assert est.upper < 0.5  # the assumption, not the mathematics, is what fails ...
    with pytest.raises(ValueError, match="outside the noise alphabet"):
        assumed.discrete_distance(x, attacked[1])  # ... and the classifier says it is not covered
    safe = make(outside_filter, UniformSubstitution(0.25, alphabet=alphabet), None, tau=0.5)
    cert = claims_hold(safe, x, attacked)
    assert cert.settings["kernel"]["attacker_alphabet"] == "any"


def test_absorbing_an_attacker_who_writes_the_mask_id_is_covered():
    """Writing the mask id is a garbling of the standard experiment: evaluated, and bounded."""
    kernel = AbsorbingMask(0.5, mask_id=99)
    x = CLEAN_TOKENS
    attacked = attacked_inputs(L0Anywhere(), x, 3, symbol=99)

    def mask_filter(tokens, cont):  # flag unless three masks show: what the attack aims at
        return (((tokens == 99).sum(axis=1) < 6) & (cont.mean(axis=1) > 0.3)).astype(int)

    claims_hold(make(mask_filter, kernel, L0Anywhere()), x, attacked, min_budget=1)


def test_append_only_needs_the_slot_explicitly():
    smoothed = make(keyword_filter, KERNELS["uniform"](), AppendOnly(4, filler=10))
    with pytest.raises(TypeError, match="AppendInput"):
        smoothed.certify(CLEAN_TOKENS, IMAGE, n=10)
    with pytest.raises(ValueError, match="at most max_append = 4"):
        smoothed.predict(hc.AppendInput(CLEAN_TOKENS, [1, 2, 3, 4, 5]), IMAGE, n=10)
    with pytest.raises(TypeError, match="plain token sequence"):
        make(keyword_filter, KERNELS["uniform"](), L0Anywhere()).predict(
            hc.AppendInput(CLEAN_TOKENS), IMAGE, n=10)
    seen = []
    smoothed = make(lambda t, c: seen.append(t) or np.ones(len(t), int), KERNELS["uniform"](),
                    AppendOnly(4, filler=10))
    smoothed.predict(hc.AppendInput(CLEAN_TOKENS[:6], [KEYWORD]), IMAGE, n=5)
    assert seen[0].shape == (5, 10)  # trusted part + the slot padded to m, in the same form
    threat = AppendOnly(4, filler=10)
    with pytest.raises(ValueError, match="outside the threat region"):
        L0Anywhere().discrete_distance(CLEAN_TOKENS, CLEAN_TOKENS[:7])
    with pytest.raises(ValueError, match="outside the threat region"):
        threat.discrete_distance(hc.AppendInput(CLEAN_TOKENS[:6]), hc.AppendInput(CLEAN_TOKENS[:5]))
    with pytest.raises(ValueError, match="outside the threat region"):
        InPlaceSuffix(2).discrete_distance(CLEAN_TOKENS, np.r_[0, CLEAN_TOKENS[1:]])


def test_per_budget_estimates_the_same_classifier_as_predict():
    """The published loop noised only the last d positions; here every estimate is of g."""
    seen = []

    def model(tokens, cont):
        seen.append(tokens.copy())
        return np.ones(len(tokens), int)

    smoothed = hc.SmoothedClassifier(model, discrete_noise=UniformSubstitution(1.0, vocab_size=50),
                                     sigma=SIGMA, threat=InPlaceSuffix(4), decision="threshold",
                                     tau=0.05, batch_size=100)
    cert = smoothed.certify(CLEAN_TOKENS, IMAGE, n=100, d_max=3, protocol="per_budget")
    assert len(seen) == 4 and len(cert.count) == 4 and cert.settings["level"] == 1e-3 / 4
    for batch in seen:  # beta = 1: all four suffix positions change in every sample
        assert (batch[:, -4:] != CLEAN_TOKENS[-4:]).all() and (batch[:, :-4] == CLEAN_TOKENS[:-4]).all()


# --------------------------------------------------------------------------- MMCert-style ablation


def test_mmcert_pixel_units_hold_against_a_one_pixel_attack():
    """A pixel is the unit: changing all channels of one pixel is one change."""
    image = np.full((3, 3, 3), 0.5, np.float32)

    def marker_filter(tokens, images):  # safe (0) when the marker colour shows in a kept value
        return (~np.isclose(images, 0.9).any(axis=(1, 2, 3))).astype(int)

    # tau between the attacked probability (8/9: 1 of 9 pixels kept) and what a per-value
    # count would promise (1 - 1/27): certifying one pixel here would be a broken claim.
    smoother = MMCertSmoother(marker_filter, k_text=2, k_image=1, mask_id=99, channel_axis=-1,
                              decision="threshold", tau=0.93, random_state=0)
    tokens = np.arange(4)
    cert = smoother.certify(tokens, image, n=N_CERT, alpha=1e-3, e_text=[0], e_image=[0, 1])
    assert cert.certified[0, 0]
    attacked = image.copy()
    attacked[0, 0, :] = 0.9  # one pixel, all of its channels
    est = smoother.estimate(tokens, attacked, n=N_EVAL, alpha=LEVEL, random_state=1)
    assert est.upper < 0.93 and abs(est.p - 8 / 9) < 0.01  # the attack works ...
    assert not cert.certified[0, 1]  # ... and the certificate never claimed otherwise


def test_mmcert_needs_the_channel_axis_and_checks_labels():
    image = np.full((3, 3, 3), 0.5, np.float32)
    ones = MMCertSmoother(lambda t, x: np.ones(len(t), int), k_text=2, k_image=1, mask_id=99,
                          decision="threshold", tau=0.5)
    with pytest.raises(ValueError, match="channel_axis"):
        ones.certify(np.arange(4), image, n=10)
    colour = MMCertSmoother(lambda t, x: np.ones(len(t), int), k_text=2, k_image=1, mask_id=99,
                            channel_axis=-1)
    with pytest.raises(ValueError, match="label must be < num_classes"):
        colour.estimate(np.arange(4), image, n=10, label=5)
    with pytest.raises(ValueError, match="finite"):
        colour.estimate(np.arange(4), np.full_like(image, np.nan), n=10)
    with pytest.raises(ValueError, match="n0 must be an integer >= 1"):
        colour.certify(np.arange(4), image, n0=0, n=10)
    with pytest.raises(ValueError, match="e_image must lie in"):
        colour.certify(np.arange(4), image, n=10, e_image=[10])
    for bad, match in ((lambda t, x: np.full(len(t), 0.9), "integer labels"),
                       (lambda t, x: np.ones(len(t) - 1, int), "shape"),
                       (lambda t, x: np.full(len(t), 7), "outside")):
        smoother = MMCertSmoother(bad, k_text=2, k_image=1, mask_id=99, channel_axis=-1)
        with pytest.raises(ValueError, match=match):
            smoother.certify(np.arange(4), image, n0=10, n=10)

    def raises(tokens, images):
        raise RuntimeError("model down")

    smoother = MMCertSmoother(raises, k_text=2, k_image=1, mask_id=99, channel_axis=-1,
                              decision="threshold", tau=0.5)
    est = smoother.estimate(np.arange(4), image, n=50)
    assert est.count == 0 and est.abstentions == 50 and est.errors == 50
    assert not smoother.certify(np.arange(4), image, n=50).certified[0, 0]


def test_joint_attack_supports_append_only_and_cannot_beat_a_claim():
    torch = pytest.importorskip("torch")
    from hybridcert.attacks import JointAttack
    from hybridcert.models import TorchClassifier

    class Keyword(torch.nn.Module):
        def forward(self, tokens, images):
            score = 6.0 * (tokens != KEYWORD).all(dim=1).float() + 10 * (images.mean(1) - 0.3) - 5
            return torch.stack([-score, score], dim=1)

    threat = AppendOnly(4, filler=10)
    smoothed = hc.SmoothedClassifier(TorchClassifier(Keyword()), discrete_noise=KERNELS["uniform"](),
                                     sigma=SIGMA, threat=threat, decision="threshold", tau=0.05,
                                     batch_size=5000, random_state=0)
    x = hc.AppendInput(CLEAN_TOKENS[:6])
    cert = smoothed.certify(x, IMAGE.astype(np.float32), n=N_CERT, alpha=1e-3, d_max=2)
    attack = JointAttack(smoothed, Keyword(), candidates=[KEYWORD, 20, 30], eot_samples=16,
                         pgd_steps=10, random_state=0)
    results = attack.run(x, IMAGE.astype(np.float32), budgets=[0, 1, 2], radii=[0.0, 0.5],
                         n_eval=4000, alpha=LEVEL)
    by = {(r.d, r.radius): r for r in results}
    assert list(by[1, 0.0].tokens.appended) == [KEYWORD]  # it appended the keyword
    assert by[1, 0.0].p_estimate < by[0, 0.0].p_estimate - 0.4
    for r in results:
        assert threat.discrete_distance(x, r.tokens) <= r.d
        assert np.linalg.norm(r.image - IMAGE) <= r.radius + 1e-6
        if r.d <= cert.largest_budget and r.radius <= cert.radius(r.d):
            assert r.p_upper >= 0.05


# --------------------------------------------------------------------------- review findings


def test_recompute_can_certify_what_abstained_at_another_tau():
    cert = make(keyword_filter, KERNELS["uniform"](), L0Anywhere(), tau=0.99).certify(
        CLEAN_TOKENS, IMAGE, n=2000, d_max=1, random_state=0)
    assert cert.label == -1
    again = hc.recompute(cert, tau=0.05)
    fresh = make(keyword_filter, KERNELS["uniform"](), L0Anywhere(), tau=0.05).certify(
        CLEAN_TOKENS, IMAGE, n=2000, d_max=1, random_state=0)
    assert again.label == 1 and again.radii == fresh.radii
    with pytest.raises(TypeError, match="Certificate"):
        hc.recompute(cert.to_dict(), tau=0.1)


def test_torch_classifier_labels_each_sample_on_its_own():
    torch = pytest.importorskip("torch")
    from hybridcert.models import TorchClassifier

    class Norm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(4)

        def forward(self, tokens, x):
            return torch.stack([x.sum(1) * 0, self.norm(x).sum(1)], 1)

    module = Norm()
    model = TorchClassifier(module)
    module.train()  # a training loop may leave it so
    batch = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    assert (model(None, batch)[:8] == model(None, batch[:8])).all()  # no batch statistics


@pytest.mark.parametrize("kwargs,match", [
    ({"discrete_noise": None, "sigma": None}, "nothing is smoothed"),
    ({"threat": "suffix"}, "threat must be a ThreatRegion"),
    ({"sigma": "0.5"}, "sigma must be a number"),
    ({"clamp": (1, 0)}, "low < high"),
    ({"clamp": (float("nan"), 1)}, "clamp must be finite"),
    ({"clamp": "01"}, "clamp must be"),
])
def test_bad_configuration_is_named(kwargs, match):
    config = {"discrete_noise": KERNELS["uniform"](), "sigma": SIGMA, **kwargs}
    with pytest.raises(ValueError, match=match):
        hc.SmoothedClassifier(keyword_filter, **config)


def test_bad_inputs_are_named():
    assert InPlaceSuffix(2.0).length == 2 and type(AppendOnly(2.0, 0).max_append) is int
    smoothed = make(keyword_filter, KERNELS["uniform"](), L0Anywhere())
    with pytest.raises(ValueError, match="int64 range"):
        smoothed.predict(np.array([1e20, 1.0]), IMAGE, n=10)
    with pytest.raises(ValueError, match="int64 range"):
        smoothed.predict(np.array([2**64 - 1, 1], dtype=np.uint64), IMAGE, n=10)
    with pytest.raises(ValueError, match=r"\[0, vocab_size = 50\)"):
        smoothed.predict(np.array([60, 1]), IMAGE, n=10)
    with pytest.raises(TypeError, match="not a string"):
        smoothed.predict("hello", IMAGE, n=10)
    assert smoothed.predict(CLEAN_TOKENS, tuple(IMAGE), n=10) in (-1, 0, 1)  # a tuple is an array
    with pytest.raises(ValueError, match="float array"):
        smoothed.predict(CLEAN_TOKENS, 3, n=10)


def test_a_sample_that_crashes_the_model_does_not_take_its_batch_along():
    """A label is per sample: a token that makes the model raise costs only its own samples."""

    def fragile(tokens, cont):  # raises on any batch holding the attacker's token
        if (tokens == KEYWORD).any():
            raise ValueError("unknown token")
        return (cont.mean(axis=1) > 0.3).astype(int)

    from hybridcert.sampling import count_labels

    x = CLEAN_TOKENS
    attacked = attacked_inputs(L0Anywhere(), x, 1)
    smoothed = make(fragile, KERNELS["uniform"](), L0Anywhere())
    smoothed.on_model_error, smoothed.max_error_rate = "flag", 1.0  # count the crashes, go on
    tokens, cont = smoothed.sample(attacked[1], IMAGE, 4000, random_state=3)
    alone = []
    for i in range(4000):  # each sample on its own
        try:
            alone.append(int(fragile(tokens[i:i + 1], cont[i:i + 1])[0]))
        except ValueError:
            alone.append(-1)
    chunks = iter([(tokens[i:i + 1000], cont[i:i + 1000]) for i in range(0, 4000, 1000)])
    seen = count_labels(fragile, lambda b: next(chunks), 4000, batch_size=1000, num_classes=2)
    assert seen.counts[1] == alone.count(1) and seen.errors == alone.count(-1)
    assert 2800 < seen.errors < 3200 and seen.counts[1] > 600  # ~75% keep the token and raise
    claims_hold(smoothed, x, attacked_inputs(L0Anywhere(), x, 3), min_budget=1)
