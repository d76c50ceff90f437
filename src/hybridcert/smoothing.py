"""The smoothed classifier: sampling, PREDICT and CERTIFY (Cohen et al. 2019, docs/theory.md §7).

A *base classifier* is any callable ``f(tokens, continuous) -> labels`` taking
a batch of noisy token sequences (``(B, L)`` int) and noisy continuous inputs
(``(B, *shape)``), and returning ``B`` integer labels. Numpy arrays go in when
the user passed numpy arrays; torch tensors on the input's device when the
user passed torch tensors. A label the model could not produce properly is
``ABSTAIN`` (-1). The model may return it; abstentions are never skipped:
they count against the certified label.

A model that raises fails closed (``on_model_error``): by default the call
raises :class:`~hybridcert.sampling.ModelError` at the first sample on which
the model raises; with ``on_model_error="flag"`` a failed sample counts as the
target label under the threshold rule ("flagged") and against every label
under the majority rule, and the call raises once the share of failed samples
exceeds ``max_error_rate``. A model error never reads as "not flagged". (A
batch that raises is served again in halves first: only samples that raise on
their own are failed samples.)

The base classifier must label each sample on its own: the same sample gets
the same label (or the same label distribution, for a randomised model)
whatever else is in its batch and whatever the batch size. A torch module in
train mode (batch-norm statistics, dropout coupled across the batch) breaks
this, and with it every certificate; :class:`~hybridcert.models.TorchClassifier`
puts its module in eval mode at every call. The continuous part reaches the
model in the container and dtype it was given (numpy or torch, float32 or
float64), or in those its ``prepare_continuous`` chooses (below); a
deployment fixes both, and the certificate is about that choice.

Two optional methods of the base classifier are used when present:
``prepare_continuous(x)`` returns the clean continuous input where the noise
should be drawn (for instance a tensor on the model's GPU; called once per
``certify``/``predict``), and ``describe()`` returns a JSON-able dict recorded
as ``settings["base_classifier"]`` of every certificate.

CERTIFY, shared-D (the default): noise the whole threat region once, draw
``n0`` samples to pick the label and ``n`` fresh ones to lower-bound its
probability. That one bound certifies every budget ``d <= d_max``
(docs/theory.md §2, "shared-D"), so a frontier costs ``n0 + n`` model calls at
level ``alpha``. The loop-over-d protocol (``protocol="per_budget"``) is a
cost baseline: it estimates the *same* smoothed classifier independently for
each budget, at ``alpha / (d_max + 1)`` each for the same joint level, and
costs ``n0 + (d_max + 1) n`` calls. (Noising only the last ``d`` positions for
budget ``d``, as the published scripts do, would define another classifier per
budget, and its certificate would say nothing about the one ``predict``
evaluates; docs/theory.md §2.)

Sequential sampling (``sampling="sequential"``) draws the estimate in looks
and stops when the requested (d, r) targets are certified or out of reach,
with an anytime-valid lower bound (:mod:`hybridcert.sequential`); it costs
``n0 +`` the samples it used. Every sample comes from a counter-based stream
(:mod:`hybridcert.streams`): sample ``j`` of a call is the same whatever the
batch size or the stopping point. With more than two labels the majority
rule certifies by ``lower(A) > upper(every other label)`` unless
``multiclass_rule="half"``.

The invariant every certificate keeps: it is a claim about exactly the
function that :meth:`SmoothedClassifier.predict` (and :meth:`estimate`)
computes, at every input the threat region it records can reach from the
certified one (:meth:`~hybridcert.noise.ThreatRegion.discrete_distance`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import sequential as seq
from ._validation import check_int, check_open_unit, check_positive, json_safe
from .decision import DecisionRule
from .noise import (
    AppendInput,
    DiscreteKernel,
    GaussianNoise,
    L0Anywhere,
    ThreatRegion,
    attack_atoms,
    to_like,
)
from .record import (
    STATUS_NAMES,
    Certificate,
    Estimate,
    certificate_from_counts,
    target_thresholds,
    with_radii,
)
from .sampling import ABSTAIN, MAX_ERROR_RATE, ON_MODEL_ERROR, LabelCounts, ModelError, count_labels
from .spec import AUTO_BATCH, EstimationSpec
from .stats import clopper_pearson_lower, clopper_pearson_upper, split_alpha
from .streams import NoiseStream, block_max_for

__all__ = ["SmoothedClassifier"]

logger = logging.getLogger(__name__)

MULTICLASS_RULES = ("runner_up", "half")
# Default target radii of sequential sampling, in units of sigma: the report's grid.
REPORT_RADII = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
# Noise phases of an example's stream: label selection, then the estimates.
_SELECT, _ESTIMATE = 0, 1


class SmoothedClassifier:
    """Hybrid randomized smoothing of a base classifier (discrete kernel + Gaussian noise).

    Parameters
    ----------
    base_classifier : callable
        ``f(tokens, continuous) -> labels``, see the module docstring.
    discrete_noise : DiscreteKernel or None
        Noise on the token ids (``UniformSubstitution``, ``AbsorbingMask``,
        ``CategoricalSubstitution``); ``None`` for Gaussian-only smoothing
        (only ``d = 0`` is then certified).
    sigma : float > 0, or None
        Gaussian noise level on the continuous part; ``None`` for
        discrete-only smoothing: the continuous part reaches the model
        unchanged, and radii are 0 at every certified budget.
    threat : ThreatRegion, default L0Anywhere()
        Which positions are noised and attackable.
    decision : {"majority", "threshold"} or DecisionRule
        A :class:`~hybridcert.decision.DecisionRule` carries ``tau``,
        ``target_label`` and ``num_classes`` itself; with a string they come
        from the arguments below.
        ``"majority"``: predict the most probable of ``num_classes`` labels,
        certified when its lower bound exceeds 1/2 (Cohen's rule), or with
        more than two classes by ``multiclass_rule``.
        ``"threshold"``: the safety-filter rule, flag ``target_label`` iff its
        smoothed probability is at least ``tau``.
    num_classes : int >= 2
    multiclass_rule : {"runner_up", "half"}
        Majority rule with ``num_classes > 2``. ``"runner_up"`` (default):
        certified where the lower bound on the top label A beats the upper
        bound on every other label under attack (docs/theory.md §8,
        :func:`~hybridcert.multiclass_radius`); ``alpha`` is split, half for
        A's lower bound and half over the ``num_classes - 1`` upper bounds.
        ``"half"``: A's lower bound must exceed 1/2 (all of ``alpha`` on it).
        ``benchmarks/multiclass.py`` measures both on the 10 digit classes.
    target_label : int
        The label the threshold rule certifies (for instance 1 = unsafe).
    tau : float in (0, 1)
        Threshold of the threshold rule (the paper uses 4.6e-5).
    clamp, denoiser
        Passed to :class:`~hybridcert.noise.GaussianNoise`.
    batch_size : int
        Noisy samples per base-classifier call; memory stays bounded by it.
    random_state : None, int, numpy SeedSequence or Generator
        Root of the noise stream (``random_state`` of a call overrides it).
        Samples are drawn in blocks keyed by (root, phase, block index)
        (:mod:`hybridcert.streams`), so sample ``j`` is the same whatever the
        batch size or where sequential sampling stops.
    on_model_error : {"raise", "flag"}
        What a sample on which the base classifier raises becomes (after its
        batch was served again in halves). ``"raise"`` (default, fail
        closed): :meth:`predict`, :meth:`estimate` and :meth:`certify` raise
        :class:`~hybridcert.sampling.ModelError` with the first error at once.
        ``"flag"``: the sample counts as ``target_label`` under the threshold
        rule (the input is flagged, never let through) and as an abstention
        under the majority rule (against every label: it only lowers the
        bound). The certificate is then about the classifier that treats a
        model error so, and ``Certificate.errors`` counts those samples.
    max_error_rate : float in [0, 1]
        ``"flag"`` only: the largest share of failed samples of an input (over
        all its samples so far) that is still answered; above it the call
        raises ``ModelError`` (default 0.05: a guard that fails on more than
        1 sample in 20 is broken, not noisy). Both are recorded in every
        certificate's settings (``on_model_error``, ``max_error_rate``).

    Examples
    --------
    A filter that flags bright images, whatever its 6 tokens say. The
    certificate cannot know that the tokens are ignored: each changed token
    costs radius, less so with more token noise (``beta``).

    >>> import numpy as np
    >>> from hybridcert.noise import UniformSubstitution
    >>> def bright(tokens, images):
    ...     return (images.mean(axis=(1, 2)) > 0.5).astype(int)
    >>> smoothed = SmoothedClassifier(bright, sigma=0.25, decision="threshold", tau=0.5,
    ...     discrete_noise=UniformSubstitution(beta=0.75, vocab_size=100), random_state=0)
    >>> cert = smoothed.certify(np.arange(6), np.ones((8, 8)), n=1000, alpha=0.001, d_max=2)
    >>> cert.label, cert.largest_budget, cert.model_calls
    (1, 2, 1000)
    >>> np.round(cert.radii, 3).tolist()
    [0.616, 0.529, 0.417]
    """

    def __init__(
        self,
        base_classifier: Callable,
        *,
        discrete_noise: DiscreteKernel | None,
        sigma: float | None,
        threat: ThreatRegion | None = None,
        decision: str | DecisionRule = "majority",
        num_classes: int = 2,
        target_label: int = 1,
        tau: float | None = None,
        clamp: tuple[float, float] | None = None,
        denoiser: Callable | None = None,
        batch_size: int = 256,
        random_state=None,
        multiclass_rule: str = "runner_up",
        on_model_error: str = ON_MODEL_ERROR[0],
        max_error_rate: float = MAX_ERROR_RATE,
    ):
        if not callable(base_classifier):
            raise ValueError("base_classifier must be callable: f(tokens, continuous) -> labels")
        if discrete_noise is not None and not isinstance(discrete_noise, DiscreteKernel):
            raise ValueError("discrete_noise must be a DiscreteKernel or None")
        if discrete_noise is None and sigma is None:
            raise ValueError("give discrete_noise, sigma or both: with neither nothing is smoothed")
        if threat is not None and not isinstance(threat, ThreatRegion):
            raise ValueError("threat must be a ThreatRegion (L0Anywhere(), InPlaceSuffix(D), "
                             f"AppendOnly(m, filler)), got {threat!r}")
        self.base_classifier = base_classifier
        self.discrete_noise = discrete_noise
        self.sigma = None if sigma is None else float(check_positive("sigma", sigma))
        self.threat = L0Anywhere() if threat is None else threat
        self.rule, self.target_label = DecisionRule.resolve(
            decision, tau=tau, num_classes=num_classes, target_label=target_label)
        self.decision, self.num_classes, self.tau = (self.rule.kind, self.rule.num_classes,
                                                     self.rule.tau)
        self.gaussian = None if sigma is None else GaussianNoise(self.sigma, clamp, denoiser)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.random_state = random_state
        if multiclass_rule not in MULTICLASS_RULES:
            raise ValueError(f"multiclass_rule must be one of {MULTICLASS_RULES}, "
                             f"got {multiclass_rule!r}")
        self.multiclass_rule = multiclass_rule
        if on_model_error not in ON_MODEL_ERROR:
            raise ValueError(f"on_model_error must be one of {ON_MODEL_ERROR}, "
                             f"got {on_model_error!r}")
        self.on_model_error = on_model_error
        rate = float(max_error_rate) if np.ndim(max_error_rate) == 0 else np.nan
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"max_error_rate must be in [0, 1], got {max_error_rate!r}")
        self.max_error_rate = rate

    @property
    def runner_up_rule(self) -> bool:
        """Whether certificates use lower(A) > upper(runner-up) (majority, > 2 classes)."""
        return (self.decision == "majority" and self.num_classes > 2
                and self.multiclass_rule == "runner_up")

    # ------------------------------------------------------------------ public methods

    def predict(self, x_discrete, x_continuous, *, n: int = 1000, alpha: float = 0.001,
                random_state=None) -> int:
        """Cohen's PREDICT: the smoothed label, or ``ABSTAIN`` when the test is inconclusive.

        Majority rule: the top label if a two-sided binomial test of the top two
        counts rejects a tie at level ``alpha``. Threshold rule: the target label
        if its lower bound reaches ``tau``, the other label if the upper bound is
        below ``tau``, else ``ABSTAIN``.
        """
        n = check_int("n", n, minimum=1)
        alpha = float(check_open_unit("alpha", alpha))
        inputs = self._inputs(x_discrete, x_continuous)
        seen = self._counts(inputs, self._stream(inputs, random_state), _ESTIMATE, 0, n)
        self._check_errors(seen.errors, n, seen.first_error, log=True)
        counts = seen.counts
        if self.decision == "threshold":
            k = int(counts[self.target_label])
            if clopper_pearson_lower(k, n, alpha) >= self.tau:
                return self.target_label
            if clopper_pearson_upper(k, n, alpha) < self.tau:
                return 1 - self.target_label if self.num_classes == 2 else ABSTAIN
            return ABSTAIN
        top2 = np.argsort(-counts, kind="stable")[:2]
        n_a, n_b = int(counts[top2[0]]), int(counts[top2[1]])
        from scipy.stats import binomtest  # here: importing scipy.stats costs a CLI run ~1 s

        if n_a + n_b == 0 or binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2[0])

    def estimate(self, x_discrete, x_continuous, *, n: int = 10_000, alpha: float = 0.001,
                 label: int | None = None, random_state=None) -> Estimate:
        """Estimate the smoothed probability of ``label`` at an input (clean or attacked).

        The same noise and base classifier as :meth:`predict` and :meth:`certify`:
        this is how an attacked input's smoothed probability is checked against a
        certificate (an abstention counts against ``label``).

        Parameters
        ----------
        x_discrete, x_continuous
            The input, in the form the threat region takes (an
            :class:`~hybridcert.noise.AppendInput` for ``AppendOnly``).
        n : int >= 1
            Noisy samples.
        alpha : float in (0, 1)
            Level of each one-sided Clopper-Pearson bound.
        label : int, optional
            Defaults to ``target_label``.
        """
        n = check_int("n", n, minimum=1)
        alpha = float(check_open_unit("alpha", alpha))
        label = self.target_label if label is None else check_int("label", label, minimum=0)
        if label >= self.num_classes:
            raise ValueError(f"label must be < num_classes ({self.num_classes}), got {label}")
        inputs = self._inputs(x_discrete, x_continuous)
        seen = self._counts(inputs, self._stream(inputs, random_state), _ESTIMATE, 0, n)
        self._check_errors(seen.errors, n, seen.first_error, log=True)
        return Estimate.from_counts(label, seen, n, alpha)

    def discrete_distance(self, x_discrete, x_attacked) -> int:
        """The discrete budget ``d`` an attacked input uses; a certificate at ``d`` covers it.

        The threat region's :meth:`~hybridcert.noise.ThreatRegion.discrete_distance`,
        plus what the kernel assumes the attacker can write (symbols of the
        vocabulary; with ``attacker_alphabet="noise"``, of the noise alphabet).
        Raises ``ValueError`` for an input no certificate of this classifier covers.
        """
        d = self.threat.discrete_distance(x_discrete, x_attacked)
        if self.discrete_noise is None:
            if d:
                raise ValueError("without discrete noise only d = 0 is covered")
            return 0
        seq, _ = self.threat.apply(x_discrete)
        adv, _ = self.threat.apply(x_attacked)
        self.discrete_noise.check_attack(adv[seq != adv])
        return d

    def sample(self, x_discrete, x_continuous, n: int, *, random_state=None):
        """``n`` noisy copies of an input, exactly as the base classifier receives them.

        Returns ``(tokens, continuous)``: the model-facing token batch ``(n, L)``
        (the threat region applied, then the kernel) or None, and the noisy
        continuous batch (clamp and denoiser applied). Attacks and diagnostics
        use it so that they see the smoothed classifier's own noise.
        """
        n = check_int("n", n, minimum=1)
        inputs = self._inputs(x_discrete, x_continuous)
        return self._finish(inputs, *self._stream(inputs, random_state).take(_ESTIMATE, 0, n))

    def certify(self, x_discrete, x_continuous, spec: EstimationSpec | None = None, *,
                n0: int | None = None, n: int | None = None, alpha: float | None = None,
                d_max: int | None = None, protocol: str | None = None,
                sampling: str | None = None, n_max: int | None = None, targets=None,
                rtol: float | None = None, batch_size: int | str | None = None,
                random_state=None) -> Certificate:
        """Cohen's CERTIFY over every budget ``d = 0..d_max`` (see the module docstring).

        Parameters
        ----------
        x_discrete : 1-D int array (or torch tensor), or None
            Token ids of the input (``None``: no discrete part).
        x_continuous : array or tensor, or None
            The continuous part (image in [0, 1], numeric features).
        spec : EstimationSpec, optional
            The estimation settings (:class:`~hybridcert.spec.EstimationSpec`,
            its defaults when omitted); the keywords below override its fields,
            and the result is checked as a spec. Its ``seed`` is not used: the
            noise comes from ``random_state``.
        n0, n : int >= 1
            Selection and estimation samples (``n0`` is unused by the
            threshold rule, whose label is fixed; ``n`` by sequential sampling).
        alpha : float in (0, 1)
            Joint failure probability of every reported claim.
        d_max : int, optional
            Largest budget; defaults to ``min(8, attackable positions)``.
        protocol : {"shared", "per_budget"}
        sampling : {"fixed", "sequential"}, optional
            ``"fixed"`` (the default without ``targets``): ``n`` estimation
            samples. ``"sequential"`` (the default with ``targets``): sample in
            looks (4, then a factor sqrt(2), up to ``n_max``) and stop as soon
            as the question is settled, with an anytime-valid lower bound
            (:mod:`hybridcert.sequential`); shared protocol, threshold rule or
            the 1/2 majority rule.
        n_max : int >= 1
            Sequential sampling: most estimation samples (100,000).
        targets : None, "frontier", sequence of radii, or sequence of (d, r)
            Sequential sampling. Target mode (the default, ``None``: the
            report's radii ``(0, .25, .5, 1, 1.5, 2, 3) * sigma`` at every
            budget; radii: those at every budget; pairs: exactly those)
            stops when every target is certified or out of reach
            (``Certificate.decisions``). ``"frontier"``: stop when samples up
            to ``n_max`` could not raise any ``r*(d)`` by more than ``rtol``,
            or could not certify any budget (early abstention).
        rtol : float > 0
            Relative tolerance of frontier mode.
        batch_size : int >= 1 or "auto", optional
            Samples per model call of this certification (default: the
            spec's, else this classifier's ``batch_size``); no result depends on it.
        """
        spec = as_spec(spec, n0=n0, n=n, alpha=alpha, d_max=d_max, protocol=protocol,
                       sampling=sampling, n_max=n_max, targets=targets, rtol=rtol,
                       batch_size=batch_size)
        job = self._job(x_discrete, x_continuous, spec, random_state=random_state)
        batch = engine_batch(spec.batch_size, self.batch_size)
        while (request := job.request()) is not None:
            try:
                seen = self._counts(job.inputs, job.stream, *request, batch_size=batch,
                                    cuts=job.cuts())
            except ModelError as err:  # the input's counts, not only this look's
                err.calls += job.calls
                raise
            job.receive(seen)
            _Job.advance([job])
        return job.certificate()

    def check_spec(self, spec: EstimationSpec) -> None:
        """Raise ``ValueError`` if this classifier cannot certify under ``spec`` (no input needed)."""
        if spec.resolved_sampling == "sequential" and self.runner_up_rule:
            raise ValueError("sampling='sequential' certifies with one lower bound; with "
                             "more than two classes pass multiclass_rule='half' to the "
                             "SmoothedClassifier, or use sampling='fixed'")

    def attackable(self, x_discrete) -> int:
        """The attackable (noised) positions of an input under this classifier's threat region."""
        if x_discrete is None or self.discrete_noise is None:
            return 0
        return int(self.threat.apply(x_discrete)[1].sum())

    def _job(self, x_discrete, x_continuous, spec: EstimationSpec, *, random_state) -> _Job:
        """One input's certification under a (checked) spec, set up: no model call.

        Only what depends on this classifier and the input is checked here.
        """
        self.check_spec(spec)
        inputs = self._inputs(x_discrete, x_continuous)
        attackable = inputs.attackable
        d_max = min(8, attackable) if spec.d_max is None else spec.d_max
        if d_max > attackable:
            raise ValueError(f"d_max ({d_max}) exceeds the attackable positions ({attackable}) "
                             f"of the threat region")
        attack = self._attack_spec(inputs)
        rule = None
        alpha = spec.alpha
        if spec.resolved_sampling == "sequential":
            target_list = None
            if spec.targets != "frontier":
                target_list = tuple(_parse_targets(spec.targets, d_max, self.sigma))
            rule = _look_rule(json.dumps(attack, sort_keys=True), self.sigma, self.tau, alpha,
                              d_max, spec.resolved_n_max, target_list, spec.rtol)
        # Both protocols estimate the same smoothed classifier; per_budget does it d_max + 1 times.
        estimates, level = (1, alpha) if spec.protocol == "shared" else \
            (d_max + 1, split_alpha(alpha, d_max + 1))
        return _Job(self, inputs, self._stream(inputs, random_state),
                    settings=self.settings_for(spec, d_max=d_max), spec=attack, rule=rule,
                    n0=spec.n0, n=spec.n, estimates=estimates, level=level)

    def settings_for(self, spec: EstimationSpec | None = None, *,
                     d_max: int | None = None) -> dict:
        """The settings every certificate of this classifier records, before any example.

        ``d_max`` overrides the spec's (a certificate records the budget it
        resolved). The per-example entries (``counted_label``, ``level``,
        ``attack``, ``stream``, ``base_classifier``) are ``None``;
        :meth:`certify` fills them in. The row of a failed example carries
        this dict, so that every row's ``settings`` has the same shape.
        """
        spec = EstimationSpec() if spec is None else spec
        return {
            "decision": self.decision, "tau": self.tau, "alpha": spec.alpha,
            "counted_label": None,
            "sigma": self.sigma, "protocol": spec.protocol,
            "d_max": spec.d_max if d_max is None else d_max,
            "num_classes": self.num_classes, "target_label": self.rule.target_label,
            "threat": self.threat.describe(),
            "kernel": None if self.discrete_noise is None else self.discrete_noise.describe(),
            "gaussian": None if self.gaussian is None else self.gaussian.describe(),
            "multiclass_rule": "runner_up" if self.runner_up_rule else "half",
            "sampling": spec.resolved_sampling, "stream": None, "level": None, "attack": None,
            "base_classifier": None, "on_model_error": self.on_model_error,
            "max_error_rate": self.max_error_rate,
        }

    # ------------------------------------------------------------------ internals

    def _inputs(self, x_discrete, x_continuous) -> _Inputs:
        if x_discrete is None and self.discrete_noise is not None:
            raise ValueError("x_discrete is None but discrete_noise is set")
        if x_continuous is None and self.sigma is not None:
            raise ValueError("x_continuous is None but sigma is set")
        seq = mask = like = None
        if x_discrete is not None:
            seq, mask = self.threat.apply(x_discrete)
            if self.discrete_noise is None:  # Gaussian-only: nothing is noised or attackable
                mask = np.zeros_like(mask)
            like = x_discrete.trusted if isinstance(x_discrete, AppendInput) else x_discrete
        cont = None
        if x_continuous is not None:  # with sigma None it reaches the model unchanged
            cont = _check_continuous(x_continuous)
            prepare = getattr(self.base_classifier, "prepare_continuous", None)
            if callable(prepare):
                cont = prepare(cont)
        return _Inputs(seq, mask, like, cont)

    def _attack_spec(self, inputs: _Inputs) -> dict:
        if inputs.tokens is None or self.discrete_noise is None:
            return {"kernel": "none"}
        return self.discrete_noise.attack_spec(inputs.tokens, inputs.mask)

    def _stream(self, inputs: _Inputs, random_state) -> NoiseStream:
        """The example's counter-based noise stream (blocks drawn by :meth:`_raw_block`)."""
        root = self.random_state if random_state is None else random_state
        draw_tokens = None
        if inputs.tokens is not None and self.discrete_noise is not None:
            draw_tokens = self.discrete_noise._bound_sampler(inputs.tokens, inputs.mask)
        return NoiseStream(root, lambda gen, size: self._raw_block(inputs, size, gen, draw_tokens),
                           block_max=block_max_for(inputs.sample_bytes))

    def _raw_block(self, inputs: _Inputs, b: int, rng: np.random.Generator,
                   draw_tokens: Callable | None):
        """``b`` noisy samples drawn from one block's generator: tokens first (``draw_tokens``,
        the kernel's sampler bound to the input), then the continuous part (numpy tokens; no
        denoiser yet, it runs per model batch)."""
        tok_b = None
        if inputs.tokens is not None:
            tok_b = inputs.tokens[None].repeat(b, 0) if draw_tokens is None else draw_tokens(b, rng)
        cont_b = None if inputs.cont is None else (
            self.gaussian.draw(inputs.cont, b, rng) if self.gaussian is not None
            else _repeat(inputs.cont, b))
        return tok_b, cont_b

    def _finish(self, inputs: _Inputs, tok_b, cont_b):
        """A model batch from stream samples: tokens as the user's array type, then the denoiser."""
        if tok_b is not None:
            tok_b = to_like(tok_b, inputs.like)
        if cont_b is not None and self.gaussian is not None:
            cont_b = self.gaussian.denoise(cont_b)
        return tok_b, cont_b

    def _counts(self, inputs: _Inputs, stream: NoiseStream, phase: int, start: int,
                stop: int, batch_size: int | None = None, cuts=None) -> LabelCounts:
        """Label counts over samples ``start..stop-1`` of ``phase``, classified batch by batch;
        also per segment ending at each of ``cuts`` (absolute sample indices), if given."""
        cursor = [start]

        def draw(b):
            a = cursor[0]
            cursor[0] += b
            return self._finish(inputs, *stream.take(phase, a, a + b))

        return self._count_labels(self.base_classifier, draw, stop - start,
                                  batch_size or self.batch_size,
                                  ends=None if cuts is None else np.asarray(cuts) - start)

    def _count_labels(self, model: Callable, draw: Callable, size: int,
                      batch_size: int, ends=None) -> LabelCounts:
        """:func:`~hybridcert.sampling.count_labels` under this classifier's error policy."""
        # threshold rule: a failed sample is "flagged"; majority: against every label
        failed = self.target_label if self.decision == "threshold" else ABSTAIN
        return count_labels(model, draw, size, batch_size=batch_size,
                            num_classes=self.num_classes, failed_label=failed,
                            raise_on_error=self.on_model_error == "raise", ends=ends)

    def _check_errors(self, errors: int, calls: int, first_error: str | None, *,
                      log: bool) -> None:
        """Raise ``ModelError`` when the share of failed samples exceeds ``max_error_rate``;
        with ``log``, the input's one log line about its failed samples."""
        if not errors:
            return
        if errors > self.max_error_rate * calls:
            raise ModelError(f"the base classifier raised on {errors} of {calls} samples "
                             f"(more than max_error_rate={self.max_error_rate}); first error: "
                             f"{first_error}", first_error=first_error, errors=errors,
                             calls=calls)
        if log:
            logger.warning("the base classifier raised on %d of %d samples of an input "
                           "(on_model_error=%r: counted as %s); first error: %s", errors, calls,
                           self.on_model_error, "flagged" if self.decision == "threshold"
                           else "abstentions", first_error)


class _Job:
    """One input's certification as a sequence of sample requests, then its certificate.

    :meth:`SmoothedClassifier.certify` serves the requests one at a time; the
    scheduler (:mod:`hybridcert.scheduler`) serves the requests of many inputs
    in shared model batches. Both feed :meth:`receive` the same counts
    (counter-based streams, a model that labels each sample on its own) and
    run the same look update (:meth:`advance`), so the certificates are the same.
    A request is ``(phase, start, stop)``: samples ``start..stop-1`` of a phase.
    """

    def __init__(self, smoothed: SmoothedClassifier, inputs: _Inputs, stream: NoiseStream, *,
                 settings: dict, spec: dict, rule: seq.LookRule | None, n0: int, n: int,
                 estimates: int, level: float):
        self.smoothed, self.inputs, self.stream = smoothed, inputs, stream
        self.settings, self.spec, self.rule = settings, spec, rule
        self.n0, self.n, self.estimates, self.level = n0, n, estimates, level
        # the threshold rule certifies a fixed label; the majority rule selects it with n0 samples
        self.label = smoothed.target_label if smoothed.decision == "threshold" else None
        self.track = None if rule is None else rule.start()
        self.seen: list[np.ndarray] = []        # fixed sampling: label counts of each estimate
        self.pending: list[int] | None = None   # sequential: successes of each look, not yet seen
        self.stopped: str | None = None         # why the caller stopped the job early
        self.calls = self.abstained = self.errors = 0
        self.first_error: str | None = None

    def request(self) -> tuple[int, int, int] | None:
        """The samples to classify next, or None when the certificate is ready."""
        if self.stopped is not None:
            return None
        if self.label is None:
            return _SELECT, 0, self.n0
        if self.rule is None:
            e = len(self.seen)
            return (_ESTIMATE + e, 0, self.n) if e < self.estimates else None
        if self.label == ABSTAIN or self.track.done:
            return None
        return _ESTIMATE, *self.rule.span(self.track)

    def cuts(self) -> tuple[int, ...] | None:
        """Where :meth:`request`'s samples are counted apart: the sample counts of the looks
        it spans (the last is its end); None when they are counted as one."""
        if self.rule is None or self.label is None or self.track.look == self.track.last:
            return None
        return self.rule.cuts(self.track)

    def shorten(self, room: int) -> bool:
        """End the next request at its last look within ``room`` more samples (a call budget);
        False when none fits (label selection and fixed sampling: never)."""
        return self.rule is not None and self.label is not None and \
            self.rule.shorten(self.track, room)

    def receive(self, seen: LabelCounts) -> None:
        """The label counts of the samples of :meth:`request` (per look of :meth:`cuts`)."""
        _, start, stop = self.request()
        cuts = self.cuts()
        if cuts is not None and seen.errors:
            # the failed share is checked at every look the request spans, as one look at a
            # time would: a share too high at an inner look fails the input there
            first = self.first_error or seen.first_error
            inner = zip(self.errors + np.cumsum(seen.segment_errors[:-1]),
                        self.calls + np.asarray(cuts[:-1]) - start)
            for errors, calls in inner:
                self.smoothed._check_errors(int(errors), int(calls), first, log=False)
        self.calls += stop - start
        self.abstained += seen.abstentions
        self.errors += seen.errors
        self.first_error = self.first_error or seen.first_error
        self.smoothed._check_errors(self.errors, self.calls, self.first_error, log=False)
        if self.label is None:
            label = int(np.argmax(seen.counts))
            self.label = label if self.calls - self.abstained > 0 else ABSTAIN
        elif self.rule is None:
            self.seen.append(seen.counts)
        else:
            self.pending = [int(seen.counts[self.label])] if seen.segments is None else \
                seen.segments[:, self.label].tolist()

    @staticmethod
    def advance(jobs: Sequence[_Job]) -> None:
        """The look update of every job whose look just arrived: one vectorised call per rule."""
        groups: dict[int, list[_Job]] = {}
        for job in jobs:
            if job.pending is not None:
                groups.setdefault(id(job.rule), []).append(job)
        for group in groups.values():
            group[0].rule.update([j.track for j in group], [j.pending for j in group])
            for job in group:
                job.pending = None

    def stop(self, reason: str) -> None:
        """Stop before the next request (a call budget or deadline): open targets stay undecided."""
        self.stopped = reason

    def certificate(self) -> Certificate:
        smoothed = self.smoothed
        smoothed._check_errors(self.errors, self.calls, self.first_error, log=True)
        selected = self.label is not None
        label = self.label if selected else ABSTAIN  # stopped before the label was selected
        settings = self.settings
        settings.update(counted_label=label, stream=NoiseStream.describe(self.stream.block_max))
        n0 = self.n0 if smoothed.decision != "threshold" and selected else 0
        common = {"label": label, "radii": (), "largest_budget": -1, "n0": n0,
                  "abstentions": self.abstained, "errors": self.errors,
                  "model_calls": self.calls, "first_error": self.first_error}
        if self.rule is not None:
            track = self.track
            info = self.rule.record(track, STATUS_NAMES)
            if self.stopped is not None:
                info["stopped"] = self.stopped
            # described after sampling: a guard records the forward batch it settled on
            settings.update(level=info["level_per_look"], attack=[self.spec], sequential=info,
                            base_classifier=describe_model(smoothed.base_classifier))
            cert = Certificate(**common, p_lower=track.lower, count=(track.k,), n=(track.used,),
                               settings=settings)
            return with_radii(cert, [track.lower])
        counts = [int(c[label]) if label != ABSTAIN else 0 for c in self.seen]
        runner_up = ()
        if smoothed.runner_up_rule:
            runner_up = tuple(int(np.delete(c, label).max()) if label != ABSTAIN else self.n
                              for c in self.seen)
        settings.update(level=self.level, attack=[self.spec] * self.estimates,
                        base_classifier=describe_model(smoothed.base_classifier))
        cert = Certificate(**common, p_lower=0.0, count=tuple(counts),
                           n=(self.n,) * self.estimates, settings=settings, runner_up=runner_up)
        return certificate_from_counts(cert)


@lru_cache(maxsize=64)
def _look_rule(spec_json: str, sigma, tau, alpha, d_max, n_max, targets, rtol) -> seq.LookRule:
    """The stopping rule of a run's settings, built once per run (thresholds p*, reachable
    thresholds, atoms), not once per input; ``targets`` None is frontier mode."""
    spec = json.loads(spec_json)
    cs = seq.UnionClopperPearson(seq.look_schedule(n_max), alpha=alpha)
    info = {**cs.describe(), "n_max": n_max, "mode": "frontier" if targets is None else "targets"}
    if targets is None:
        info["rtol"] = rtol
        atoms = [attack_atoms(spec, d) for d in range(d_max + 1)]
        return seq.LookRule(cs, None, {"sigma": sigma, "tau": tau, "atoms": atoms, "rtol": rtol},
                            info)
    p_star = target_thresholds(spec, sigma, tau, list(targets))
    p_star.setflags(write=False)
    info["targets"] = [[d, r] for d, r in targets]
    info["p_star"] = [float(p) for p in p_star]
    return seq.LookRule(cs, p_star, None, info)


def _check_continuous(x):
    """The continuous part as given (a torch tensor stays one), or a ValueError saying why not."""
    if type(x).__module__.startswith("torch"):
        import torch

        ok_type, empty = x.is_floating_point(), x.numel() == 0
        finite = ok_type and not empty and bool(torch.isfinite(x).all())
        dtype = x.dtype
    else:
        x = np.asarray(x)
        ok_type, empty = np.issubdtype(x.dtype, np.floating), x.size == 0
        finite = ok_type and not empty and bool(np.isfinite(x).all())
        dtype = x.dtype
    if not ok_type:
        raise ValueError(f"x_continuous must be a float array, got dtype {dtype}")
    if empty:
        raise ValueError("x_continuous must not be empty")
    if not finite:
        raise ValueError("x_continuous must be finite (no NaN or inf)")
    return x


@dataclass(frozen=True)
class _Inputs:
    """One input as the model sees it: the threat region applied once."""

    tokens: np.ndarray | None   # model-facing token sequence
    mask: np.ndarray | None     # noised (= attackable) positions
    like: object                # what the user passed (numpy or torch), for the batch type
    cont: object                # continuous part, numpy or torch

    @property
    def attackable(self) -> int:
        return 0 if self.mask is None else int(self.mask.sum())

    @property
    def sample_bytes(self) -> int:
        """Bytes of one noisy sample (sets the noise block size)."""
        size = 0 if self.tokens is None else self.tokens.nbytes
        if self.cont is not None:
            if type(self.cont).__module__.startswith("torch"):
                size += self.cont.element_size() * self.cont.nelement()
            else:
                size += np.asarray(self.cont).nbytes
        return size


def describe_model(model) -> dict | None:
    """The base classifier's own description, when it offers one, in plain JSON types
    (a ValueError names an entry JSON cannot hold)."""
    describe = getattr(model, "describe", None)
    return json_safe(describe(), "base_classifier.describe()") if callable(describe) else None


def _repeat(x, b: int):
    """``b`` unchanged copies of the continuous part (text-only smoothing)."""
    if type(x).__module__.startswith("torch"):
        return x.unsqueeze(0).expand(b, *x.shape)
    return np.repeat(np.asarray(x)[None], b, axis=0)  # a writable copy: models may write to it


def _parse_targets(targets, d_max: int, sigma: float | None) -> list[tuple[int, float]]:
    """The (d, r) targets of sequential target mode at an input's ``d_max``: the spec's
    (checked) targets expanded, radii at every budget (see :meth:`SmoothedClassifier.certify`)."""
    if targets is None:
        radii = [0.0] if sigma is None else [f * sigma for f in REPORT_RADII]
        return [(d, float(r)) for d in range(d_max + 1) for r in radii]
    if not isinstance(targets[0], tuple):
        return [(d, r) for d in range(d_max + 1) for r in targets]
    for d, _ in targets:
        if d > d_max:
            raise ValueError(f"a target's budget d must be an integer in [0, d_max={d_max}], "
                             f"got {d!r}")
    return list(targets)


def as_spec(spec: EstimationSpec | None = None, **given) -> EstimationSpec:
    """``spec`` with the ``given`` keywords that are not None; without a spec, the defaults but
    the batch size (None: the classifier's own)."""
    if spec is not None and not isinstance(spec, EstimationSpec):
        raise ValueError(f"spec must be a hybridcert.spec.EstimationSpec, got {spec!r}")
    changes = {k: v for k, v in given.items() if v is not None}
    if spec is None:
        return EstimationSpec(**{"batch_size": None, **changes})
    return spec.replace(**changes) if changes else spec


def engine_batch(batch_size, own: int) -> int:
    """Samples per model call: the spec's (``"auto"``: AUTO_BATCH), else the classifier's."""
    if batch_size is None:
        return own
    return AUTO_BATCH if batch_size == "auto" else batch_size
