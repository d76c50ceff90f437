"""Samplers match their kernels, and likelihood-ratio frequencies match the atoms."""

import numpy as np
import pytest
from scipy.stats import binomtest, chisquare, kstest

import hybridcert as hc
from hybridcert.noise import (
    AbsorbingMask,
    AppendInput,
    AppendOnly,
    CategoricalSubstitution,
    GaussianNoise,
    InPlaceSuffix,
    L0Anywhere,
    UniformSubstitution,
)

LEVEL = 1e-3  # every goodness-of-fit test below rejects a correct sampler with probability 1e-3


def test_uniform_substitution_law_per_position():
    kernel = UniformSubstitution(beta=0.3, vocab_size=6)
    tokens = np.array([2, 5, 0])
    z = kernel.sample(tokens, np.ones(3, dtype=bool), 60_000, np.random.default_rng(1))
    for i, sym in enumerate(tokens):
        observed = np.bincount(z[:, i], minlength=6)
        expected = np.full(6, 0.3 / 5)
        expected[sym] = 0.7
        assert chisquare(observed, expected * len(z)).pvalue > LEVEL


def test_restricted_alphabet_and_outside_symbol():
    alphabet = np.array([10, 20, 30, 40])
    kernel = UniformSubstitution(beta=0.5, alphabet=alphabet)
    tokens = np.array([20, 99])  # 99 is outside the noise alphabet
    z = kernel.sample(tokens, np.ones(2, dtype=bool), 40_000, np.random.default_rng(2))
    assert set(np.unique(z[:, 0])) == {10, 20, 30, 40}
    counts = [np.sum(z[:, 1] == s) for s in (99, 10, 20, 30, 40)]
    assert chisquare(counts, np.array([0.5, 0.125, 0.125, 0.125, 0.125]) * len(z)).pvalue > LEVEL


@pytest.mark.parametrize("kernel, tokens", [
    (UniformSubstitution(beta=0.4, vocab_size=7), np.array([0, 6, 3, 3])),
    (UniformSubstitution(beta=0.4, alphabet=[10, 20, 30]), np.array([20, 99, 10, 5])),
    (AbsorbingMask(beta=0.4, mask_id=-1), np.array([1, 2, 3, 4])),
])
def test_a_bound_sampler_draws_what_sample_draws(kernel, tokens):
    """The engine draws through ``_bound_sampler(tokens, noised)`` once per input; a block is the
    block ``sample`` gives from the same generator state, sample for sample."""
    noised = np.array([True, True, False, True])
    draw = kernel._bound_sampler(tokens, noised)
    for n, seed in ((1, 0), (4, 1), (257, 2)):
        np.testing.assert_array_equal(draw(n, np.random.default_rng(seed)),
                                      kernel.sample(tokens, noised, n, np.random.default_rng(seed)))


def test_a_subclass_that_overrides_sample_keeps_its_law_in_the_engine():
    """The engine draws through ``_bound_sampler``; a subclass of UniformSubstitution overriding
    only ``sample`` must still be the law the engine draws (found by the adversarial review)."""

    class KeepsZero(UniformSubstitution):
        def sample(self, tokens, noised, n, rng):
            return super().sample(tokens, noised & (tokens != 0), n, rng)

    kernel = KeepsZero(beta=0.5, vocab_size=50)
    tokens, noised = np.array([0, 7, 0, 3]), np.ones(4, dtype=bool)
    drawn = kernel._bound_sampler(tokens, noised)(2_000, np.random.default_rng(0))
    assert (drawn[:, [0, 2]] == 0).all() and (drawn[:, [1, 3]] != tokens[[1, 3]]).any()
    smoothed = hc.SmoothedClassifier(lambda t, x: (np.asarray(t)[:, 0] == 0).astype(int),
                                     discrete_noise=kernel, sigma=None, num_classes=2)
    cert = smoothed.certify(tokens, None, n0=20, n=300, alpha=0.01, random_state=0)
    assert cert.label == 1 and cert.count == (300,)


def test_a_patched_sample_is_what_the_engine_draws(monkeypatch):
    """A class-level patch of UniformSubstitution.sample (a test double) is drawn, not bypassed."""
    monkeypatch.setattr(UniformSubstitution, "sample",
                        lambda self, t, m, n, rng: np.repeat(t[None], n, axis=0))
    smoothed = hc.SmoothedClassifier(lambda t, x: (np.asarray(t)[:, 0] == 0).astype(int),
                                     discrete_noise=UniformSubstitution(1.0, vocab_size=50),
                                     sigma=None, num_classes=2)
    tokens, _ = smoothed.sample(np.array([0, 1, 2, 3]), None, 5, random_state=0)
    assert (np.asarray(tokens) == [0, 1, 2, 3]).all()


def test_uniform_substitution_stream_is_the_elementwise_bound_draw():
    """The kernel draws with a scalar bound where every token is inside the alphabet; that is
    the stream of the elementwise bound ``V - inside`` (the streams recorded as counter-v1)."""
    kernel = UniformSubstitution(beta=0.3, vocab_size=9)
    tokens, noised = np.array([4, 0, 8, 2, 2]), np.ones(5, dtype=bool)
    for n, seed in ((3, 5), (64, 6)):
        rng = np.random.Generator(np.random.Philox(seed))
        pick = rng.integers(0, np.full(5, 8), size=(n, 5))
        pick = pick + (pick >= tokens)
        expected = np.where(rng.random((n, 5)) < 0.3, pick, tokens)
        got = kernel.sample(tokens, noised, n, np.random.Generator(np.random.Philox(seed)))
        np.testing.assert_array_equal(got, expected)


def test_only_noised_positions_change():
    kernel = UniformSubstitution(beta=1.0, vocab_size=5)
    tokens = np.array([0, 1, 2, 3, 4])
    seq, mask = InPlaceSuffix(2).apply(tokens)
    z = kernel.sample(seq, mask, 500, np.random.default_rng(0))
    assert (z[:, :3] == tokens[:3]).all() and (z[:, 3:] != tokens[3:]).all()
    seq, mask = AppendOnly(3, filler=7).apply(AppendInput(tokens))
    assert list(seq) == [0, 1, 2, 3, 4, 7, 7, 7] and mask.sum() == 3 and mask[-3:].all()
    seq, mask = AppendOnly(3, filler=7).apply(AppendInput(tokens, [9]))
    assert list(seq) == [0, 1, 2, 3, 4, 9, 7, 7] and list(mask) == [False] * 5 + [True] * 3
    assert L0Anywhere().apply(tokens)[1].all()
    with pytest.raises(ValueError, match="suffix length"):
        InPlaceSuffix(9).apply(tokens)


def test_absorbing_mask_rate_is_beta():
    kernel = AbsorbingMask(beta=0.2, mask_id=-5)
    z = kernel.sample(np.arange(4), np.ones(4, dtype=bool), 20_000, np.random.default_rng(3))
    masked = int((z == -5).sum())
    assert binomtest(masked, z.size, 0.2).pvalue > LEVEL
    assert set(np.unique(z[z != -5])) <= {0, 1, 2, 3}
    # A mask id in the input (written by an attacker) stays masked: a garbling the atoms cover.
    z = kernel.sample(np.array([-5, 1]), np.ones(2, dtype=bool), 200, np.random.default_rng(0))
    assert (z[:, 0] == -5).all() and set(np.unique(z[:, 1])) == {-5, 1}


def test_categorical_substitution_per_field():
    kernel = CategoricalSubstitution(beta=0.4, arities=(2, 3, 5))
    tokens = np.array([1, 0, 4])
    z = kernel.sample(tokens, np.ones(3, dtype=bool), 50_000, np.random.default_rng(4))
    for i, (v, sym) in enumerate(zip((2, 3, 5), tokens)):
        expected = np.full(v, 0.4 / (v - 1))
        expected[sym] = 0.6
        assert chisquare(np.bincount(z[:, i], minlength=v), expected * len(z)).pvalue > LEVEL
    with pytest.raises(ValueError, match=r"\[0, arity\)"):
        kernel.sample(np.array([2, 0, 0]), np.ones(3, dtype=bool), 2, np.random.default_rng(0))


@pytest.mark.parametrize("beta,vocab,d", [(0.25, 4, 3), (0.6, 2, 4), (1.0, 5, 2), (0.9, 3, 3)])
def test_likelihood_ratio_frequencies_match_the_atoms(beta, vocab, d):
    """Sample z under x and under x'; the law of log q(z)/p(z) is the atoms' p_clean / p_adv."""
    kernel = UniformSubstitution(beta=beta, vocab_size=vocab)
    x, x_adv = np.zeros(d, dtype=np.int64), np.ones(d, dtype=np.int64)
    atoms = hc.uniform_atoms(d, beta=beta, vocab_size=vocab)
    with np.errstate(divide="ignore"):
        log_rho = np.log(1 - beta) + np.log(vocab - 1) - np.log(beta)  # -inf at beta = 1
    for source, masses in ((x, atoms.p_clean), (x_adv, atoms.p_adv)):
        z = kernel.sample(source, np.ones(d, dtype=bool), 80_000, np.random.default_rng(5))
        # Per position: z = x' gives ratio rho, z = x gives 1/rho, anything else 1.
        n_adv, n_clean = (z == 1).sum(axis=1), (z == 0).sum(axis=1)
        with np.errstate(invalid="ignore"):
            lr = (np.where(n_adv > 0, n_adv * log_rho, 0.0)
                  - np.where(n_clean > 0, n_clean * log_rho, 0.0))
        observed = np.array([np.sum(np.isclose(lr, g) | (lr == g)) for g in atoms.log_ratio])
        assert observed.sum() == len(z)  # every sample falls on exactly one atom
        support = masses > 0
        assert observed[~support].sum() == 0
        expected = masses[support] / masses[support].sum() * len(z)
        assert chisquare(observed[support], expected).pvalue > LEVEL


def test_gaussian_noise_law_clamp_and_denoiser():
    noise = GaussianNoise(0.5)
    x = np.array([0.2, 0.8], dtype=np.float64)
    z = noise.sample(x, 20_000, np.random.default_rng(6))
    assert z.shape == (20_000, 2)
    assert kstest((z[:, 0] - 0.2) / 0.5, "norm").pvalue > LEVEL
    clamped = GaussianNoise(0.5, clamp=(0.0, 1.0)).sample(x, 1000, np.random.default_rng(6))
    assert clamped.min() >= 0 and clamped.max() <= 1
    denoised = GaussianNoise(0.5, denoiser=lambda b: b * 0).sample(x, 10, np.random.default_rng(6))
    assert (denoised == 0).all()
    f32 = noise.sample(x.astype(np.float32), 3, np.random.default_rng(0))
    assert f32.dtype == np.float32


def test_gaussian_noise_on_torch_tensors():
    torch = pytest.importorskip("torch")
    x = torch.zeros(3, 4)
    z = GaussianNoise(1.0, clamp=(-2, 2)).sample(x, 5000, np.random.default_rng(7))
    assert isinstance(z, torch.Tensor) and z.shape == (5000, 3, 4) and z.dtype == torch.float32
    inner = z[:, 0, 0].numpy()
    inner = inner[np.abs(inner) < 2]  # the clamp moves the tails onto +-2
    assert kstest(inner, "truncnorm", args=(-2, 2)).pvalue > LEVEL
    assert float(z.abs().max()) <= 2
    again = GaussianNoise(1.0, clamp=(-2, 2)).sample(x, 5000, np.random.default_rng(7))
    assert torch.equal(z, again)


def test_kernel_validation():
    with pytest.raises(ValueError, match=r"beta must lie in \(0, 1\]"):
        UniformSubstitution(beta=1.2, vocab_size=5)
    with pytest.raises(ValueError, match="exactly one of vocab_size and alphabet"):
        UniformSubstitution(beta=0.2)
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 2"):
        UniformSubstitution(beta=0.2, vocab_size=1)
    with pytest.raises(ValueError, match="sigma must be positive"):
        GaussianNoise(0.0)


def test_attack_atoms_follow_the_alphabet_and_attacker():
    tokens = np.array([1, 2, 99])
    mask = np.ones(3, dtype=bool)
    plain = UniformSubstitution(beta=0.3, alphabet=[1, 2, 3, 4, 5], attacker_alphabet="noise")
    options = plain.attack_atoms(1, tokens, mask)
    assert len(options) == 2  # the attacker may change an inside or the outside symbol
    strong = UniformSubstitution(beta=0.3, alphabet=[1, 2, 3, 4, 5])  # the default: any symbol
    assert len(strong.attack_atoms(1, tokens, mask)) == 4
    # A stronger attacker can only lower the certificate.
    r_plain = min(hc.certified_radius(0.999, sigma=1, atoms=a, tau=0.01) for a in options)
    r_strong = min(hc.certified_radius(0.999, sigma=1, atoms=a, tau=0.01)
                   for a in strong.attack_atoms(1, tokens, mask))
    assert r_strong <= r_plain
