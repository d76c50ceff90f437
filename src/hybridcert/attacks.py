"""An empirical joint attack on the smoothed classifier: greedy token search + L2 PGD.

The attack lowers the smoothed probability ``p_A(x')`` of the certified label
``A`` within a budget ``(d, r)``. It is the empirical counterpart of the
certificate, which promises ``p_A(x') >= tau`` there. An attack that beats a
certified ``(d, r)`` would be a bug, and so would a large gap: a loose
certificate.

- Tokens: a greedy search. ``d`` times, every (position, candidate token) pair
  in the threat region is scored, and the best one is kept.
- Continuous part: L2-bounded PGD on the same objective, through the model.
  The objective is an expectation over the smoothing noise (EOT: the mean
  probability of ``A`` over ``eot_samples`` noise draws, common to all
  candidates of a step). When the model is not differentiable, a random
  search on the sphere of radius ``r`` replaces PGD.
- Evaluation: ``p_A(x')`` of the *smoothed* classifier is estimated with
  ``n_eval`` fresh samples of the hard base classifier. A Clopper-Pearson
  upper bound says whether the certificate was beaten. The base classifier's
  own label at ``x'`` is reported too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .noise import DiscreteKernel, L0Anywhere, ThreatRegion, as_tokens
from .stats import clopper_pearson_upper

__all__ = ["AttackResult", "JointAttack"]


@dataclass(frozen=True)
class AttackResult:
    """The attack at one budget ``(d, radius)``."""

    d: int
    radius: float
    p_estimate: float      # smoothed probability of the target label at x'
    p_upper: float         # Clopper-Pearson upper bound on it
    base_label: int        # the base classifier's label at x' (no noise)
    tokens: np.ndarray
    image: np.ndarray


class JointAttack:
    """Greedy tokens + PGD (or random search) against a torch model ``module(tokens, x) -> logits``.

    Parameters
    ----------
    module : torch.nn.Module
        The base classifier's logits (the hard classifier is their argmax).
    discrete_noise : DiscreteKernel
    sigma : float
    target_label : int
        The label whose smoothed probability the attack lowers.
    threat : ThreatRegion
        The positions the attacker may change (default: all).
    candidates : array of int, optional
        Token ids tried at each position (default ``range(vocab_size)``).
    eot_samples, pgd_steps : int
    differentiable : bool
        False forces the gradient-free random search.
    random_state : int or Generator
    """

    def __init__(self, module, *, discrete_noise: DiscreteKernel, sigma: float, target_label: int,
                 threat: ThreatRegion | None = None, candidates=None, eot_samples: int = 32,
                 pgd_steps: int = 20, differentiable: bool = True, random_state=0):
        self.module = module.eval()
        self.kernel = discrete_noise
        self.sigma = float(sigma)
        self.target = int(target_label)
        self.threat = threat or L0Anywhere()
        vocab = getattr(discrete_noise, "vocab_size", None)
        self.candidates = np.asarray(candidates if candidates is not None else np.arange(vocab))
        self.eot = eot_samples
        self.steps = pgd_steps
        self.differentiable = differentiable
        self.rng = np.random.default_rng(random_state)

    def run(self, x_discrete, x_continuous, *, budgets, radii, n_eval: int = 2000,
            alpha: float = 0.001) -> list[AttackResult]:
        """Attack every ``(d, r)`` in ``budgets x radii``; the token search is nested in ``d``."""
        tokens = as_tokens(x_discrete)
        image = np.asarray(x_continuous, dtype=np.float32)
        _, attackable = self.threat.apply(tokens)
        self._mask = attackable if self.kernel is not None else np.zeros(tokens.size, bool)
        results = []
        current, changed = tokens.copy(), set()
        for d in range(max(budgets) + 1):
            if d > 0:
                current = self._greedy_step(current, image, attackable, changed)
            if d not in budgets:
                continue
            for r in radii:
                adv = image if r == 0 else self._continuous(current, image, r)
                p, count = self._smoothed_probability(current, adv, n_eval)
                results.append(AttackResult(
                    d=d, radius=float(r), p_estimate=p,
                    p_upper=float(clopper_pearson_upper(count, n_eval, alpha)),
                    base_label=self._base_label(current, adv), tokens=current.copy(), image=adv))
        return results

    # ------------------------------------------------------------------ objective

    def _noisy(self, tokens_rows: np.ndarray, image, seed: int):
        """``eot`` noisy copies of each row (the same noise seed for every row: common numbers)."""
        import torch

        rows = []
        for row in tokens_rows:
            rng = np.random.default_rng(seed)
            rows.append(self.kernel.sample(row, self._mask, self.eot, rng))
        toks = torch.as_tensor(np.concatenate(rows))
        gen = torch.Generator().manual_seed(seed)
        eps = torch.randn((self.eot, *np.shape(image)), generator=gen)
        return toks, eps

    def _target_probability(self, toks, images):
        import torch

        return torch.softmax(self.module(toks, images), dim=-1)[:, self.target]

    def _greedy_step(self, tokens, image, attackable, changed) -> np.ndarray:
        import torch

        options = [(pos, c) for pos in np.flatnonzero(attackable) if pos not in changed
                   for c in self.candidates if c != tokens[pos]]
        seed = int(self.rng.integers(2**31))
        scores = []
        with torch.no_grad():
            for start in range(0, len(options), 64):
                chunk = options[start:start + 64]
                rows = np.repeat(tokens[None], len(chunk), axis=0)
                for i, (pos, c) in enumerate(chunk):
                    rows[i, pos] = c
                toks, eps = self._noisy(rows, image, seed)
                imgs = (torch.as_tensor(image)[None] + self.sigma * eps).repeat(len(chunk), 1, 1)
                probs = self._target_probability(toks, imgs).reshape(len(chunk), self.eot)
                scores.extend(probs.mean(dim=1).tolist())
        pos, c = options[int(np.argmin(scores))]
        changed.add(pos)
        out = tokens.copy()
        out[pos] = c
        return out

    def _continuous(self, tokens, image, radius: float) -> np.ndarray:
        import torch

        seed = int(self.rng.integers(2**31))
        toks, eps = self._noisy(tokens[None], image, seed)
        base = torch.as_tensor(image)
        if not self.differentiable:
            return self._random_search(toks, eps, base, radius)
        delta = torch.zeros_like(base, requires_grad=True)
        step = 2.5 * radius / self.steps
        for _ in range(self.steps):
            loss = self._target_probability(toks, base + delta + self.sigma * eps).mean()
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta -= step * grad / (grad.norm() + 1e-12)
                norm = delta.norm()
                if norm > radius:
                    delta *= radius / norm
        return (base + delta.detach()).numpy()

    def _random_search(self, toks, eps, base, radius: float, tries: int = 64) -> np.ndarray:
        import torch

        best, best_p = base, float("inf")
        with torch.no_grad():
            for _ in range(tries):
                direction = torch.as_tensor(self.rng.standard_normal(base.shape), dtype=base.dtype)
                cand = base + radius * direction / direction.norm()
                p = float(self._target_probability(toks, cand + self.sigma * eps).mean())
                if p < best_p:
                    best, best_p = cand, p
        return best.numpy()

    # ------------------------------------------------------------------ evaluation

    def _smoothed_probability(self, tokens, image, n: int) -> tuple[float, int]:
        import torch

        count = 0
        with torch.no_grad():
            for start in range(0, n, 1000):
                b = min(1000, n - start)
                toks = self.kernel.sample(tokens, self._mask, b, self.rng)
                imgs = image[None] + self.sigma * self.rng.standard_normal((b, *image.shape))
                logits = self.module(torch.as_tensor(toks), torch.as_tensor(imgs.astype(np.float32)))
                count += int((logits.argmax(dim=-1) == self.target).sum())
        return count / n, count

    def _base_label(self, tokens, image) -> int:
        import torch

        with torch.no_grad():
            logits = self.module(torch.as_tensor(tokens[None]), torch.as_tensor(image[None]))
        return int(logits.argmax(dim=-1)[0])
