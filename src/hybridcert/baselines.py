"""Baselines the hybrid certificate is compared with (docs/theory.md §9).

- Image-only and text-only smoothing are :class:`~hybridcert.smoothing.SmoothedClassifier`
  with one part left un-noised (``discrete_noise=None`` or ``sigma=None``):
  the same engine, the same base model, the same model-call budget.
- MMCert-style certification (Wang et al., "MMCert: Provable Defense against
  Adversarial Attacks to Multi-modal Models", CVPR 2024) is here. Each
  modality is sub-sampled independently: ``k_text`` of its tokens and
  ``k_image`` of its pixels are kept, the rest ablated (a mask token, pixel
  value 0). An attacker who modifies ``e_m`` elements of modality ``m`` leaves
  the sub-sample untouched with probability
  ``delta = prod_m C(n_m - e_m, k_m) / C(n_m, k_m)``, so every smoothed
  probability moves by at most ``1 - delta``. The threshold rule is then
  certified iff ``p_lower - (1 - delta) >= tau``; the majority rule iff
  ``p_lower - (1 - delta) > p_upper_runner_up + (1 - delta)``.
  MMCert's threat model counts modified *elements* per modality (L0 on
  pixels), not an L2 radius. The ablation unit is the unit the certificate
  counts: a token, and a pixel with all of its channels (``channel_axis``),
  so an attacker who changes one pixel changes one unit whatever its channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ._validation import check_int, check_open_unit, check_token_id
from .decision import DecisionRule
from .noise import as_numpy, as_tokens
from .record import Estimate
from .sampling import ABSTAIN, count_labels
from .stats import clopper_pearson_lower, clopper_pearson_upper, split_alpha

__all__ = ["MMCertCertificate", "MMCertSmoother", "ablation_delta"]


def ablation_delta(n: int, k: int, e: int) -> float:
    """``C(n - e, k) / C(n, k)``: chance that a ``k``-subset of ``n`` misses ``e`` given elements.

    Computed exactly in integers and rounded down, so the certificate built
    on it is never too large.
    """
    n, k, e = int(n), int(k), int(e)
    if not 0 <= k <= n or not 0 <= e <= n:
        raise ValueError(f"need 0 <= k, e <= n, got n={n}, k={k}, e={e}")
    numerator, denominator = math.comb(n - e, k), math.comb(n, k)
    return float(np.nextafter(numerator / denominator, 0.0)) if numerator else 0.0


@dataclass(frozen=True)
class MMCertCertificate:
    """Certified (e_text, e_image) pairs of one example under MMCert-style ablation."""

    label: int
    p_lower: float
    p_runner_up: float
    certified: dict = field(repr=False)   # (e_text, e_image) -> bool
    largest_text: int                      # largest e_text certified with e_image = 0 (-1: none)
    largest_image: int                     # largest e_image certified with e_text = 0 (-1: none)
    model_calls: int


class MMCertSmoother:
    """MMCert-style smoothing by independent sub-sampling of each modality.

    Parameters
    ----------
    base_classifier : callable
        ``f(tokens, images) -> labels`` on *ablated* inputs (train it on them).
    k_text, k_image : int
        Tokens and pixels kept per sample.
    mask_id : int
        Token id that replaces ablated tokens (outside the vocabulary).
    channel_axis : int, optional
        The image's channel axis (``-1`` for HWC, ``0`` for CHW). Required for
        images of three or more dimensions: a pixel, all of its channels, is
        the unit that is kept or ablated and that the certificate counts.
        Without it (2-D images, feature vectors) every value is a pixel.
    decision, tau, num_classes, target_label, batch_size, random_state
        As for :class:`~hybridcert.smoothing.SmoothedClassifier`; ``decision``
        may be the same :class:`~hybridcert.decision.DecisionRule` value the
        engine uses.
    """

    def __init__(self, base_classifier: Callable, *, k_text: int, k_image: int, mask_id: int,
                 channel_axis: int | None = None, decision: str | DecisionRule = "majority",
                 tau: float | None = None, num_classes: int = 2, target_label: int = 1,
                 batch_size: int = 256, random_state=None):
        if not callable(base_classifier):
            raise ValueError("base_classifier must be callable: f(tokens, images) -> labels")
        self.base_classifier = base_classifier
        self.k_text = check_int("k_text", k_text, minimum=1)
        self.k_image = check_int("k_image", k_image, minimum=1)
        self.mask_id = check_token_id("mask_id", mask_id)
        self.channel_axis = None if channel_axis is None else check_int(
            "channel_axis", channel_axis, minimum=-32)
        self.rule, self.target_label = DecisionRule.resolve(  # the same value as the engine's
            decision, tau=tau, num_classes=num_classes, target_label=target_label)
        self.decision, self.num_classes, self.tau = (self.rule.kind, self.rule.num_classes,
                                                     self.rule.tau)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.random_state = random_state

    def _pixels(self, image: np.ndarray) -> np.ndarray:
        """The image as ``(pixels, channels)``: the ablation unit is a row."""
        if self.channel_axis is None:
            if image.ndim >= 3:
                raise ValueError(f"x_continuous has shape {image.shape}: pass channel_axis (-1 for "
                                 "HWC, 0 for CHW) so that a pixel, with all its channels, is the "
                                 "ablation unit the certificate counts")
            return image.reshape(-1, 1)
        if not -image.ndim <= self.channel_axis < image.ndim:
            raise ValueError(f"channel_axis must lie in [-{image.ndim}, {image.ndim}) for an image "
                             f"of shape {image.shape}, got {self.channel_axis}")
        moved = np.moveaxis(image, self.channel_axis, -1)
        return moved.reshape(-1, moved.shape[-1])

    def _unpixels(self, pixels: np.ndarray, image: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`_pixels` for a batch ``(b, pixels, channels)``."""
        b = pixels.shape[0]
        if self.channel_axis is None:
            return pixels.reshape((b, *image.shape))
        moved = np.moveaxis(image, self.channel_axis, -1)
        return np.moveaxis(pixels.reshape((b, *moved.shape)), -1,
                           self.channel_axis % image.ndim + 1)

    def ablate(self, tokens: np.ndarray, image: np.ndarray, b: int, rng: np.random.Generator):
        """``b`` sub-sampled copies: ``k_text`` tokens and ``k_image`` pixels kept, rest ablated."""
        pixels = self._pixels(image)
        n_t, n_i = tokens.size, pixels.shape[0]
        if self.k_text > n_t or self.k_image > n_i:
            raise ValueError(f"k_text <= {n_t} and k_image <= {n_i} (pixels) are needed for this "
                             "input")
        keep_t = np.argsort(rng.random((b, n_t)), axis=1)[:, : self.k_text]
        keep_i = np.argsort(rng.random((b, n_i)), axis=1)[:, : self.k_image]
        toks = np.full((b, n_t), self.mask_id, dtype=np.int64)
        np.put_along_axis(toks, keep_t, tokens[keep_t], axis=1)
        kept = np.zeros((b, *pixels.shape), dtype=np.float32)
        np.put_along_axis(kept, keep_i[..., None], pixels[keep_i], axis=1)
        return toks, self._unpixels(kept, image)

    def certify(self, x_discrete, x_continuous, *, n0: int = 100, n: int = 10_000,
                alpha: float = 0.001, e_text: list[int] | None = None,
                e_image: list[int] | None = None, random_state=None) -> MMCertCertificate:
        """Certify every pair in ``e_text x e_image`` (element counts modified per modality)."""
        n0 = check_int("n0", n0, minimum=1)
        n = check_int("n", n, minimum=1)
        alpha = float(check_open_unit("alpha", alpha))
        tokens, image = self._inputs(x_discrete, x_continuous)
        n_pixels = self._pixels(image).shape[0]
        rng = np.random.default_rng(self.random_state if random_state is None else random_state)
        e_text = list(range(tokens.size + 1)) if e_text is None else \
            [check_int("e_text", e, minimum=0) for e in e_text]
        e_image = [e for e in (0, 1, 2, 5, 10, 20, 50) if e <= n_pixels] if e_image is None else \
            [check_int("e_image", e, minimum=0) for e in e_image]
        for name, values, limit, unit in (("e_text", e_text, tokens.size, "tokens"),
                                          ("e_image", e_image, n_pixels, "pixels")):
            if max(values, default=0) > limit:
                raise ValueError(f"{name} must lie in [0, {limit}] (the input has {limit} {unit}), "
                                 f"got {max(values)}")
        calls = 0
        if self.decision == "threshold":
            label = self.target_label
        else:
            label = int(np.argmax(self._seen(tokens, image, n0, rng).counts))
            calls += n0
        counts = self._seen(tokens, image, n, rng).counts
        calls += n
        if self.decision == "threshold":
            p_lower, runner = clopper_pearson_lower(int(counts[label]), n, alpha), 0.0
        else:
            level = split_alpha(alpha, 2)  # two bounds from the same samples
            p_lower = clopper_pearson_lower(int(counts[label]), n, level)
            others = np.delete(counts, label)
            runner = clopper_pearson_upper(int(others.max()), n, level) if others.size else 0.0
        certified = {}
        for et in e_text:
            for ei in e_image:
                # Round the product down as well: a smaller delta is a larger, safer slack.
                delta = np.nextafter(ablation_delta(tokens.size, self.k_text, et)
                                     * ablation_delta(n_pixels, self.k_image, ei), 0.0)
                slack = float(np.nextafter(1.0 - delta, 2.0))
                # Differences rounded towards the safe side too.
                worst = float(np.nextafter(p_lower - slack, -np.inf))
                if self.decision == "threshold":
                    certified[et, ei] = worst >= self.tau
                else:
                    certified[et, ei] = worst > float(np.nextafter(runner + slack, np.inf))
        largest_text = max([et for et in e_text if certified[et, 0]] or [-1]) \
            if 0 in e_image else -1
        largest_image = max([ei for ei in e_image if certified[0, ei]] or [-1]) \
            if 0 in e_text else -1
        if not certified.get((0, 0), False):
            label = ABSTAIN
        return MMCertCertificate(label, p_lower, runner, certified, largest_text, largest_image,
                                 calls)

    def estimate(self, x_discrete, x_continuous, *, n: int = 10_000, alpha: float = 0.001,
                 label: int | None = None, random_state=None) -> Estimate:
        """The ablation-smoothed probability of ``label`` (default ``target_label``) at an input.

        The same sub-sampling and base classifier as :meth:`certify`: this is
        how an attacked input is checked against an MMCert-style certificate.
        """
        n = check_int("n", n, minimum=1)
        alpha = float(check_open_unit("alpha", alpha))
        label = self.target_label if label is None else check_int("label", label, minimum=0)
        if label >= self.num_classes:
            raise ValueError(f"label must be < num_classes ({self.num_classes}), got {label}")
        tokens, image = self._inputs(x_discrete, x_continuous)
        rng = np.random.default_rng(self.random_state if random_state is None else random_state)
        return Estimate.from_counts(label, self._seen(tokens, image, n, rng), n, alpha)

    def _inputs(self, x_discrete, x_continuous):
        tokens = as_tokens(x_discrete)
        image = as_numpy(x_continuous).astype(np.float32)
        if image.size == 0 or not np.isfinite(image).all():
            raise ValueError("x_continuous must be a non-empty, finite array (no NaN or inf)")
        self._pixels(image)  # checks the channel axis
        return tokens, image

    def _seen(self, tokens, image, size, rng):
        return count_labels(self.base_classifier, lambda b: self.ablate(tokens, image, b, rng), size,
                            batch_size=self.batch_size, num_classes=self.num_classes)
