"""An empirical joint attack on the smoothed classifier: greedy token search + L2 PGD.

The attack lowers the smoothed probability ``p_A(x')`` of a label ``A`` within
a budget ``(d, r)``. It is the empirical counterpart of the certificate, which
promises ``p_A(x') >= tau`` there. An attack that beats a certified ``(d, r)``
would be a bug, and so would a large gap: a loose certificate.

Everything random goes through the smoothed classifier itself: the noisy
samples come from its kernel, threat region and Gaussian noise (clamp and
denoiser included), and ``p_A(x')`` is measured with
:meth:`~hybridcert.smoothing.SmoothedClassifier.estimate`, so the attack
evaluates exactly the function the certificate speaks about.

- Tokens: a greedy search. ``d`` times, every (position, candidate token) pair
  the threat region allows is scored, and the best one is kept. Under
  ``AppendOnly`` the attacker appends: each step writes the next slot symbol.
- Continuous part: L2-bounded PGD on the same objective, through the model's
  logits. The objective is an expectation over the smoothing noise (EOT: the
  mean probability of ``A`` over ``eot_samples`` noise draws, common to all
  candidates of a step). When the model is not differentiable, a random
  search on the sphere of radius ``r`` replaces PGD.
- Evaluation: ``n_eval`` fresh samples and a Clopper-Pearson upper bound say
  whether the certificate was beaten. The base classifier's own label at
  ``x'`` is reported too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .noise import AppendInput, AppendOnly
from .smoothing import SmoothedClassifier

__all__ = ["AttackResult", "JointAttack"]


@dataclass(frozen=True)
class AttackResult:
    """The attack at one budget ``(d, radius)``."""

    d: int
    radius: float
    p_estimate: float      # smoothed probability of the label at x'
    p_upper: float         # Clopper-Pearson upper bound on it
    base_label: int        # the base classifier's label at x' (no noise)
    tokens: object         # the attacked discrete input, in the form the threat takes
    image: np.ndarray


class JointAttack:
    """Greedy tokens + PGD (or random search) against a smoothed classifier.

    Parameters
    ----------
    smoothed : SmoothedClassifier
        The classifier under attack; its noise, threat region and base
        classifier define the objective and the evaluation.
    module : torch.nn.Module
        ``module(tokens, x) -> logits`` of the base classifier (its argmax is
        the hard label), used for scores and gradients.
    candidates : array of int, optional
        Token ids tried at each position (default: the kernel's alphabet).
    eot_samples, pgd_steps : int
    differentiable : bool
        False forces the gradient-free random search.
    random_state : int or Generator
    """

    def __init__(self, smoothed: SmoothedClassifier, module, *, candidates=None,
                 eot_samples: int = 32, pgd_steps: int = 20, differentiable: bool = True,
                 random_state=0):
        if not isinstance(smoothed, SmoothedClassifier):
            raise TypeError("smoothed must be a SmoothedClassifier (the function under attack)")
        self.smoothed = smoothed
        self.module = module.eval()
        kernel = smoothed.discrete_noise
        if candidates is None and kernel is not None:
            sorted_alphabet = getattr(kernel, "_sorted", None)
            vocab = getattr(kernel, "vocab_size", None)
            candidates = sorted_alphabet if sorted_alphabet is not None else \
                (np.arange(vocab) if vocab is not None else None)
        self.candidates = None if candidates is None else np.asarray(candidates, dtype=np.int64)
        self.eot = eot_samples
        self.steps = pgd_steps
        self.differentiable = differentiable
        self.rng = np.random.default_rng(random_state)

    def run(self, x_discrete, x_continuous, *, budgets, radii, label: int | None = None,
            n_eval: int = 2000, alpha: float = 0.001) -> list[AttackResult]:
        """Attack every ``(d, r)`` in ``budgets x radii``; the token search is nested in ``d``."""
        self._label = self.smoothed.target_label if label is None else int(label)
        image = np.asarray(x_continuous, dtype=np.float32)
        if self.smoothed.discrete_noise is None and max(budgets) > 0:
            raise ValueError("without discrete noise only d = 0 can be attacked (and certified)")
        if self.smoothed.gaussian is None and max(radii) > 0:
            raise ValueError("without Gaussian noise only radius 0 can be attacked (and certified)")
        if max(budgets) > 0 and self.candidates is None:
            raise ValueError("candidates are needed for this kernel (token ids to try)")
        results = []
        current = x_discrete
        for d in range(max(budgets) + 1):
            if d > 0:
                current = self._greedy_step(x_discrete, current, image)
            if d not in budgets:
                continue
            for r in radii:
                adv = image if r == 0 else self._continuous(current, image, r)
                est = self.smoothed.estimate(current, adv, n=n_eval, alpha=alpha, label=self._label,
                                             random_state=int(self.rng.integers(2**63 - 1)))
                results.append(AttackResult(
                    d=d, radius=float(r), p_estimate=est.p, p_upper=est.upper,
                    base_label=self._base_label(current, adv), tokens=current, image=adv))
        return results

    # ------------------------------------------------------------------ threat-aware edits

    def _edit_sites(self, clean, current) -> np.ndarray:
        """Model-facing positions one more change may write, given the changes made so far."""
        threat = self.smoothed.threat
        seq, mask = threat.apply(current)
        if isinstance(threat, AppendOnly):
            used = current.appended.size
            return np.array([current.trusted.size + used]) if used < threat.max_append else \
                np.zeros(0, np.int64)
        clean_seq, _ = threat.apply(clean)
        return np.flatnonzero(mask & (seq == clean_seq))

    def _edited(self, current, pos: int, token: int):
        """``current`` with model-facing position ``pos`` set to ``token``, in the threat's form."""
        if isinstance(current, AppendInput):
            return AppendInput(current.trusted, np.r_[current.appended, token])
        out = np.array(current, dtype=np.int64, copy=True)
        out[pos] = token
        return out

    # ------------------------------------------------------------------ objective

    def _noisy(self, candidates: list, image, seed: int):
        """``eot`` noisy copies of each candidate input (common random numbers across them)."""
        import torch

        rows, images = [], None
        for cand in candidates:
            toks, cont = self.smoothed.sample(cand, image, self.eot, random_state=seed)
            rows.append(torch.as_tensor(toks))
            images = cont  # the same seed: the same continuous noise for every candidate
        return torch.cat(rows), torch.as_tensor(images, dtype=torch.float32)

    def _target_probability(self, toks, images):
        import torch

        return torch.softmax(self.module(toks, images), dim=-1)[:, self._label]

    def _greedy_step(self, clean, current, image):
        import torch

        sites = self._edit_sites(clean, current)
        if not sites.size:
            return current
        seq, _ = self.smoothed.threat.apply(current)
        options = [(pos, c) for pos in sites for c in self.candidates if c != seq[pos]]
        seed = int(self.rng.integers(2**31))
        scores = []
        with torch.no_grad():
            for start in range(0, len(options), 64):
                chunk = [self._edited(current, pos, c) for pos, c in options[start:start + 64]]
                toks, imgs = self._noisy(chunk, image, seed)
                imgs = imgs.repeat(len(chunk), *([1] * (imgs.dim() - 1)))
                probs = self._target_probability(toks, imgs).reshape(len(chunk), self.eot)
                scores.extend(probs.mean(dim=1).tolist())
        pos, c = options[int(np.argmin(scores))]
        return self._edited(current, pos, c)

    def _continuous(self, current, image, radius: float) -> np.ndarray:
        import torch

        seed = int(self.rng.integers(2**31))
        toks, _ = self.smoothed.sample(current, image, self.eot, random_state=seed)
        toks = torch.as_tensor(toks)
        base = torch.as_tensor(image)

        def noisy(x):  # the engine's own Gaussian noise (clamp, denoiser), common numbers
            return self.smoothed.gaussian.sample(x, self.eot, np.random.default_rng(seed))

        if not self.differentiable:
            return self._random_search(toks, noisy, base, radius)
        delta = torch.zeros_like(base, requires_grad=True)
        step = 2.5 * radius / self.steps
        for _ in range(self.steps):
            loss = self._target_probability(toks, noisy(base + delta)).mean()
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta -= step * grad / (grad.norm() + 1e-12)
                norm = delta.norm()
                if norm > radius:
                    delta *= radius / norm
        return _within(base, delta.detach(), radius)

    def _random_search(self, toks, noisy, base, radius: float, tries: int = 64) -> np.ndarray:
        import torch

        best, best_p = torch.zeros_like(base), float("inf")
        with torch.no_grad():
            for _ in range(tries):
                direction = torch.as_tensor(self.rng.standard_normal(base.shape), dtype=base.dtype)
                delta = radius * direction / direction.norm()
                p = float(self._target_probability(toks, noisy(base + delta)).mean())
                if p < best_p:
                    best, best_p = delta, p
        return _within(base, best, radius)

    def _base_label(self, current, image) -> int:
        seq = None if current is None else self.smoothed.threat.apply(current)[0][None]
        return int(np.asarray(self.smoothed.base_classifier(seq, image[None]))[0])


def _within(base, delta, radius: float) -> np.ndarray:
    """``base + delta`` as float32, with ``delta`` shrunk until the float32 norm is <= radius."""
    import torch

    delta = delta.to(torch.float64)
    for _ in range(60):  # float32 rounding may push the norm a hair above the budget
        out = (base.to(torch.float64) + delta).to(torch.float32)
        if float(torch.linalg.vector_norm(out.to(torch.float64) - base.to(torch.float64))) <= radius:
            return out.numpy()
        delta = delta * (1 - 1e-6)
    raise RuntimeError("could not keep the attack inside its L2 budget")
