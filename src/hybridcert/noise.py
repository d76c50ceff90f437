"""Noise kernels and threat regions (docs/theory.md §2).

A discrete kernel draws noisy token sequences *and* knows the atoms that
describe it. The certificate is computed from the same object that drew the
samples, so the two cannot disagree (a kernel sampled as uniform but
certified as absorbing cannot happen here). A threat region says which
positions are noised and which the attacker may change.

Sampling is vectorised and seeded: every ``sample`` takes a
``numpy.random.Generator``. Token arrays are integer numpy arrays. The engine
converts torch tensors at its edge, and :class:`GaussianNoise` draws on the
tensor's own device when given one.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ._validation import check_beta, check_int, check_positive, check_token_id
from .certificate.atoms import (
    Atoms,
    absorbing_atoms,
    categorical_atoms,
    field_choices,
    product_atoms,
    uniform_atoms,
    uniform_experiment,
)

__all__ = [
    "AbsorbingMask",
    "AppendInput",
    "AppendOnly",
    "CategoricalSubstitution",
    "DiscreteKernel",
    "GaussianNoise",
    "InPlaceSuffix",
    "L0Anywhere",
    "ThreatRegion",
    "UniformSubstitution",
    "attack_atoms",
]


# --------------------------------------------------------------------------- threat regions


@dataclass(frozen=True, eq=False)
class AppendInput:
    """A discrete input with an explicit untrusted slot, for the :class:`AppendOnly` threat.

    The smoothed classifier sees ``trusted + noise(appended + [filler] * (m - len(appended)))``:
    the slot is always padded to ``m`` symbols and noised, so the clean input
    ``AppendInput(u)`` and an attacked one ``AppendInput(u, a)`` reach the same
    function in the same form (docs/theory.md §2). A deployment must keep this
    separation: a guard that receives one flat string cannot tell where ``u``
    ends, and the certificate does not apply to it.

    Parameters
    ----------
    trusted : 1-D sequence of int
        The part the attacker cannot change (a prompt template, the user's
        request); may be empty.
    appended : 1-D sequence of int, default empty
        What was appended to it (by the attacker), at most ``m`` symbols.
    """

    trusted: np.ndarray
    appended: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self):
        object.__setattr__(self, "trusted", as_tokens(self.trusted, "trusted", allow_empty=True))
        object.__setattr__(self, "appended", as_tokens(self.appended, "appended", allow_empty=True))


class ThreatRegion(ABC):
    """Which positions are noised, and which the attacker may change (the same ones).

    A threat region is part of the smoothed classifier's definition: it turns
    the discrete input the user passes (clean or attacked, in the same form)
    into the sequence the model sees and the mask of noised positions.
    """

    @abstractmethod
    def apply(self, x_discrete) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(model-facing sequence, boolean mask of the noised/attackable positions)``."""

    def discrete_distance(self, x_discrete, x_attacked) -> int:
        """The discrete budget ``d`` that ``x_attacked`` uses against ``x_discrete``.

        Raises ``ValueError`` when ``x_attacked`` lies outside the threat region
        (another length, a change outside the attackable positions), so a
        certificate at budget ``d`` covers exactly the inputs with
        ``discrete_distance <= d``.
        """
        seq, mask = self.apply(x_discrete)
        adv, adv_mask = self.apply(x_attacked)
        if adv.shape != seq.shape or not np.array_equal(mask, adv_mask):
            raise ValueError("x_attacked lies outside the threat region: the model sees "
                             f"{adv.shape[0]} symbols for it and {seq.shape[0]} for x_discrete")
        changed = seq != adv
        if (changed & ~mask).any():
            raise ValueError("x_attacked changes positions outside the threat region: "
                             f"{np.flatnonzero(changed & ~mask).tolist()}")
        return int(changed.sum())

    def describe(self) -> dict:
        return {"region": type(self).__name__}


def _plain_tokens(region, x_discrete) -> np.ndarray:
    if isinstance(x_discrete, AppendInput):
        raise TypeError(f"{type(region).__name__} takes a plain token sequence; AppendInput is "
                        "for the AppendOnly threat")
    return as_tokens(x_discrete)


@dataclass(frozen=True)
class L0Anywhere(ThreatRegion):
    """Every position is noised; the attacker changes at most ``d`` of them anywhere."""

    def apply(self, x_discrete):
        tokens = _plain_tokens(self, x_discrete)
        return tokens, np.ones(tokens.shape[-1], dtype=bool)


@dataclass(frozen=True)
class InPlaceSuffix(ThreatRegion):
    """The last ``length`` positions are noised; the attacker changes positions inside them.

    The smoothed classifier noises the last ``length`` positions of whatever
    it receives, so an attacked input has the same length as the clean one.
    """

    length: int

    def __post_init__(self):
        object.__setattr__(self, "length", check_int("length", self.length, minimum=1))

    def apply(self, x_discrete):
        tokens = _plain_tokens(self, x_discrete)
        if self.length > tokens.shape[-1]:
            raise ValueError(f"the suffix length ({self.length}) exceeds the sequence length "
                             f"({tokens.shape[-1]})")
        mask = np.zeros(tokens.shape[-1], dtype=bool)
        mask[-self.length:] = True
        return tokens, mask

    def describe(self):
        return {"region": "InPlaceSuffix", "length": self.length}


@dataclass(frozen=True)
class AppendOnly(ThreatRegion):
    """An untrusted slot of ``max_append`` symbols after a trusted part, padded with ``filler``.

    The discrete input must be an :class:`AppendInput`. The model sees
    ``trusted + noise(appended + [filler] * (max_append - len(appended)))``, so
    appending ``d`` symbols overwrites the first ``d`` fillers of the noised
    slot; an attacker with budget ``d`` may rewrite any ``d`` slot positions.
    """

    max_append: int
    filler: int

    def __post_init__(self):
        object.__setattr__(self, "max_append", check_int("max_append", self.max_append, minimum=1))
        object.__setattr__(self, "filler", check_token_id("filler", self.filler))

    def apply(self, x_discrete):
        if not isinstance(x_discrete, AppendInput):
            raise TypeError("with the AppendOnly threat, pass the discrete input as "
                            "hybridcert.AppendInput(trusted, appended): the smoothed classifier "
                            "must know where the untrusted slot starts")
        u, a = x_discrete.trusted, x_discrete.appended
        if a.size > self.max_append:
            raise ValueError(f"appended has {a.size} symbols; the slot holds at most "
                             f"max_append = {self.max_append}")
        slot = np.full(self.max_append, self.filler, dtype=np.int64)
        slot[:a.size] = a
        mask = np.r_[np.zeros(u.size, dtype=bool), np.ones(self.max_append, dtype=bool)]
        return np.concatenate([u, slot]), mask

    def describe(self):
        return {"region": "AppendOnly", "max_append": self.max_append, "filler": self.filler}


# --------------------------------------------------------------------------- discrete kernels


class DiscreteKernel(ABC):
    """A per-position noise kernel on token ids that knows its own likelihood-ratio atoms."""

    beta: float

    @abstractmethod
    def sample(self, tokens: np.ndarray, noised: np.ndarray, n: int,
               rng: np.random.Generator) -> np.ndarray:
        """``n`` noisy copies of ``tokens`` (shape ``(n, L)``); only ``noised`` positions change."""

    def _bound_sampler(self, tokens: np.ndarray,
                       noised: np.ndarray) -> Callable[[int, np.random.Generator], np.ndarray]:
        """:meth:`sample` bound to one input: ``draw(n, rng)`` equals ``sample(tokens, noised, n, rng)``.

        The engine draws an input's noise in many blocks; a built-in kernel
        does its per-input work (checks, lookups) once here. Private: a user
        kernel defines ``sample``, and that is what the engine draws.
        """
        return lambda n, rng: self.sample(tokens, noised, n, rng)

    @abstractmethod
    def attack_spec(self, tokens: np.ndarray, attackable: np.ndarray) -> dict:
        """What the certificate needs to know about this kernel at ``tokens`` (JSON-able).

        :func:`attack_atoms` turns it into atoms, so a certificate can be
        recomputed from its recorded settings without the kernel object.
        """

    def attack_atoms(self, d: int, tokens: np.ndarray, attackable: np.ndarray) -> list[Atoms]:
        """Atoms of every experiment an attacker with budget ``d`` can induce at ``tokens``.

        The certificate is the minimum over this list (the attacker picks).
        """
        return attack_atoms(self.attack_spec(tokens, attackable), d)

    def check_attack(self, written: np.ndarray) -> None:
        """Raise ``ValueError`` if the attacker's model cannot write the symbols ``written``."""
        return None  # by default the attacker may write any symbol

    def describe(self) -> dict:
        return {"kernel": type(self).__name__, "beta": self.beta}


@dataclass(frozen=True, eq=False)
class UniformSubstitution(DiscreteKernel):
    """Keep a token w.p. ``1 - beta``, else replace it uniformly from the noise alphabet.

    Parameters
    ----------
    beta : float in (0, 1]
    vocab_size : int, optional
        Alphabet ``{0, ..., vocab_size - 1}``, declared the whole symbol space:
        noised positions must hold ids in it, and no attacker can write
        outside it. If the model accepts more symbols than the noise draws
        from, pass ``alphabet=`` instead.
    alphabet : array_like of int, optional
        An explicit (restricted) alphabet of token ids, for instance the
        printable tokens of a tokenizer. A clean token outside it is replaced
        uniformly over the whole alphabet (docs/theory.md §2.3).
    attacker_alphabet : {"any", "noise"}, default "any"
        Which symbols the attacker may write. ``"any"`` (the safe default): any
        symbol, including ones the noise can never produce (such a symbol
        reveals itself, docs/theory.md §2.3); typed text often tokenizes outside a
        restricted alphabet (a newline, a long word). ``"noise"`` assumes the
        attacker writes only symbols of the noise alphabet: an assumption about
        the tokenizer and the input channel, which the certificate records.
        The certificate takes the worst case over what the attacker can induce.
    """

    beta: float
    vocab_size: int | None = None
    alphabet: np.ndarray | None = None
    attacker_alphabet: str = "any"
    _sorted: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "beta", check_beta(self.beta))
        if (self.vocab_size is None) == (self.alphabet is None):
            raise ValueError("give exactly one of vocab_size and alphabet")
        if self.alphabet is not None:
            given = as_tokens(self.alphabet, "alphabet")
            alpha = np.unique(given)
            if alpha.size != given.size:
                raise ValueError("alphabet must not contain duplicates")
            object.__setattr__(self, "_sorted", alpha)
            object.__setattr__(self, "vocab_size", int(alpha.size))
        object.__setattr__(self, "vocab_size", check_int("vocab_size", self.vocab_size, minimum=2))
        if self.attacker_alphabet not in ("any", "noise"):
            raise ValueError(f"attacker_alphabet must be 'any' or 'noise', got {self.attacker_alphabet!r}")

    def _index(self, tokens):
        """Index of each token in the alphabet, -1 where it is outside."""
        if self._sorted is None:
            return np.where((tokens >= 0) & (tokens < self.vocab_size), tokens, -1)
        pos = np.clip(np.searchsorted(self._sorted, tokens), 0, self.vocab_size - 1)
        return np.where(self._sorted[pos] == tokens, pos, -1)

    def _check_vocabulary(self, tokens):
        if self._sorted is None and ((tokens < 0) | (tokens >= self.vocab_size)).any():
            raise ValueError(f"noised token ids must lie in [0, vocab_size = {self.vocab_size}); "
                             "for a noise alphabet smaller than the model's vocabulary pass alphabet=")

    def check_attack(self, written):
        self._check_vocabulary(written)
        if self.attacker_alphabet == "noise" and (self._index(written) < 0).any():
            raise ValueError("the attacked input writes symbols outside the noise alphabet, which "
                             "attacker_alphabet='noise' assumes the attacker cannot do: "
                             f"{written[self._index(written) < 0].tolist()}")

    def sample(self, tokens, noised, n, rng):
        return self._bind(tokens, noised)(n, rng)

    def _bound_sampler(self, tokens, noised):
        if type(self).sample is not _UNIFORM_SAMPLE:  # a subclass's (or a patch's) own law
            return super()._bound_sampler(tokens, noised)
        return self._bind(tokens, noised)

    def _bind(self, tokens, noised):
        cols = np.flatnonzero(noised)
        clean = tokens[cols]
        if cols.size:
            self._check_vocabulary(clean)
        idx = self._index(clean)
        inside = idx >= 0
        # Uniform over the alphabet minus the current symbol: draw from V - 1 and skip it.
        # A scalar bound where all are equal draws the same numbers as the array (numpy takes one
        # bounded draw an element from the same stream either way) in half the time.
        high = self.vocab_size - 1 if inside.all() else self.vocab_size - inside

        def draw(n, rng):
            out = np.repeat(tokens[None, :], n, axis=0)
            if not cols.size:
                return out
            pick = rng.integers(0, high, size=(n, cols.size))
            pick += inside & (pick >= idx)
            replacement = pick if self._sorted is None else self._sorted[pick]
            change = rng.random((n, cols.size)) < self.beta
            out[:, cols] = np.where(change, replacement, clean)
            return out

        return draw

    def attack_spec(self, tokens, attackable):
        self._check_vocabulary(tokens[attackable])
        inside = self._index(tokens[attackable]) >= 0
        return {"kernel": "uniform", "beta": self.beta, "vocab_size": self.vocab_size,
                "inside": int(inside.sum()), "outside": int((~inside).sum()),
                "attacker_alphabet": self.attacker_alphabet,
                "restricted_alphabet": self._sorted is not None}

    def describe(self):
        return {"kernel": "uniform", "beta": self.beta, "vocab_size": self.vocab_size,
                "restricted_alphabet": self._sorted is not None,
                "attacker_alphabet": self.attacker_alphabet}


@lru_cache(maxsize=1024)
def _mixed_atoms(beta, vocab, d, n_in, n_out, attacker_any) -> list[Atoms]:
    """Worst case over how an attacker spreads ``d`` changes over position types."""
    if n_out == 0 and not attacker_any:
        return [uniform_atoms(d, beta=beta, vocab_size=vocab)]  # the common case, one option
    # (clean inside?, attacker writes inside?) -> experiment; each position type offers options.
    options = {True: [True, False] if attacker_any else [True],
               False: [True, False] if attacker_any else [True]}
    kinds = [(c, a) for c in (True, False) for a in options[c]]
    experiments = {k: uniform_experiment(beta=beta, vocab_size=vocab, clean_in_alphabet=k[0],
                                         adv_in_alphabet=k[1]) for k in kinds}
    avail = {True: n_in, False: n_out}
    out = []
    for counts in itertools.product(range(d + 1), repeat=len(kinds)):
        if sum(counts) != d:
            continue
        used = {c: sum(n for (cc, _), n in zip(kinds, counts) if cc == c) for c in (True, False)}
        if used[True] > avail[True] or used[False] > avail[False]:
            continue
        out.append(product_atoms([(experiments[k], n) for k, n in zip(kinds, counts) if n]))
    if not out:
        raise ValueError(f"d = {d} exceeds the attackable positions ({n_in + n_out})")
    return out


_UNIFORM_SAMPLE = UniformSubstitution.sample


@dataclass(frozen=True, eq=False)
class AbsorbingMask(DiscreteKernel):
    """Keep a token w.p. ``1 - beta``, else replace it by ``mask_id`` (not a valid token)."""

    beta: float
    mask_id: int

    def __post_init__(self):
        object.__setattr__(self, "beta", check_beta(self.beta))
        object.__setattr__(self, "mask_id", check_token_id("mask_id", self.mask_id))

    def sample(self, tokens, noised, n, rng):
        # A mask id already in the input simply stays masked. An attacker who writes it (or a
        # clean input holding it) induces a garbling of the standard two-symbol experiment,
        # so the atoms below still bound it.
        out = np.repeat(tokens[None, :], n, axis=0)
        cols = np.flatnonzero(noised)
        masked = rng.random((n, cols.size)) < self.beta
        out[:, cols] = np.where(masked, self.mask_id, out[:, cols])
        return out

    def attack_spec(self, tokens, attackable):
        return {"kernel": "absorbing", "beta": self.beta, "positions": int(attackable.sum())}

    def describe(self):
        return {"kernel": "absorbing", "beta": self.beta, "mask_id": self.mask_id}


@dataclass(frozen=True, eq=False)
class CategoricalSubstitution(DiscreteKernel):
    """Tabular fields: field ``i`` takes values in ``{0, ..., arities[i] - 1}`` and is replaced,
    w.p. ``beta``, by one of its other categories uniformly."""

    beta: float
    arities: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "beta", check_beta(self.beta))
        object.__setattr__(self, "arities",
                           tuple(check_int("arities", a, minimum=2) for a in self.arities))
        if not self.arities:
            raise ValueError("arities must name at least one field")

    def sample(self, tokens, noised, n, rng):
        ar = np.asarray(self.arities)
        if tokens.shape[-1] != ar.size:
            raise ValueError(f"expected {ar.size} categorical fields, got {tokens.shape[-1]}")
        if ((tokens < 0) | (tokens >= ar)).any():
            raise ValueError("each categorical field must lie in [0, arity)")
        out = np.repeat(tokens[None, :], n, axis=0)
        cols = np.flatnonzero(noised)
        draw = (rng.random((n, cols.size)) * (ar[cols] - 1)).astype(np.int64)
        draw = draw + (draw >= tokens[cols])
        change = rng.random((n, cols.size)) < self.beta
        out[:, cols] = np.where(change, draw, out[:, cols])
        return out

    def attack_spec(self, tokens, attackable):
        return {"kernel": "categorical", "beta": self.beta,
                "arities": [a for a, m in zip(self.arities, attackable) if m]}

    def describe(self):
        return {"kernel": "categorical", "beta": self.beta, "arities": list(self.arities)}


def attack_atoms(spec: dict, d: int) -> list[Atoms]:
    """The attacker's options at budget ``d`` for a recorded :meth:`DiscreteKernel.attack_spec`."""
    d = check_int("d", d, minimum=0)
    kind = spec["kernel"]
    if kind == "uniform":
        if d > spec["inside"] + spec["outside"]:
            raise ValueError(f"d = {d} exceeds the attackable positions "
                             f"({spec['inside'] + spec['outside']})")
        # Outside symbols exist only beside a restricted alphabet (older specs: assume they do).
        attacker_any = spec["attacker_alphabet"] == "any" and spec.get("restricted_alphabet", True)
        return _mixed_atoms(spec["beta"], spec["vocab_size"], d, spec["inside"], spec["outside"],
                            attacker_any)
    if kind == "absorbing":
        if d > spec["positions"]:
            raise ValueError(f"d = {d} exceeds the attackable positions ({spec['positions']})")
        return [_absorbing(d, spec["beta"])]
    if kind == "categorical":
        return [_categorical(c, spec["beta"]) for c in field_choices(spec["arities"], d)]
    if kind == "none":
        if d:
            raise ValueError("no discrete noise: only d = 0 can be certified")
        return [_absorbing(0, 0.5)]
    raise ValueError(f"unknown kernel in attack spec: {kind!r}")


@lru_cache(maxsize=4096)
def _categorical(arities, beta):
    return categorical_atoms(arities, beta=beta)


@lru_cache(maxsize=1024)
def _absorbing(d, beta):
    return absorbing_atoms(d, beta=beta)


# --------------------------------------------------------------------------- continuous noise


@dataclass(frozen=True, eq=False)
class GaussianNoise:
    """Isotropic Gaussian noise ``x + sigma * N(0, I)`` on the continuous part.

    Parameters
    ----------
    sigma : float > 0
    clamp : (low, high), optional
        Clip the noisy input, e.g. ``(0, 1)`` for images. Clipping (like the
        denoiser) is post-processing of the noisy sample: it is part of the
        base classifier, so the certificate stays valid.
    denoiser : callable, optional
        Applied to each noisy batch after the noise (and the clamp). One with a
        ``for_sigma`` method (:class:`~hybridcert.denoisers.DiffusionDenoiser`)
        is replaced by ``denoiser.for_sigma(sigma)``, tuned to this noise; one
        with a ``describe`` method is recorded by it.
    """

    sigma: float
    clamp: tuple[float, float] | None = None
    denoiser: Callable | None = None

    def __post_init__(self):
        object.__setattr__(self, "sigma", float(check_positive("sigma", self.sigma)))
        if self.clamp is not None:
            if isinstance(self.clamp, (str, bytes)):
                raise ValueError(f"clamp must be a pair (low, high) of numbers, got {self.clamp!r}")
            try:
                low, high = (float(v) for v in self.clamp)
            except (TypeError, ValueError) as err:
                raise ValueError(f"clamp must be a pair (low, high) of numbers, got {self.clamp!r}") \
                    from err
            if not (np.isfinite(low) and np.isfinite(high) and low < high):
                raise ValueError(f"clamp must be finite with low < high, got {self.clamp!r}")
            object.__setattr__(self, "clamp", (low, high))
        if self.denoiser is not None and not callable(self.denoiser):
            raise ValueError("denoiser must be callable (a batch in, a batch out) or None")
        bind = getattr(self.denoiser, "for_sigma", None)
        if callable(bind):
            object.__setattr__(self, "denoiser", bind(self.sigma))

    def sample(self, x, n: int, rng: np.random.Generator):
        """``n`` noisy copies of ``x`` (numpy array or torch tensor, same type and device)."""
        return self.denoise(self.draw(x, n, rng))

    def denoise(self, noisy):
        """The denoiser applied to a noisy batch (the identity without one)."""
        return noisy if self.denoiser is None else self.denoiser(noisy)

    def draw(self, x, n: int, rng: np.random.Generator):
        """``n`` noisy, clamped copies of ``x``, before the denoiser (drawn per noise block)."""
        if _is_torch(x):
            import torch

            gen = torch.Generator(device=x.device)
            gen.manual_seed(int(rng.integers(2**63 - 1)))
            noisy = torch.randn((n, *x.shape), generator=gen, device=x.device, dtype=x.dtype)
            noisy.mul_(self.sigma).add_(x)  # in place: the draw dominates the engine's own cost
            if self.clamp is not None:
                noisy.clamp_(*self.clamp)
        else:
            dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
            noisy = rng.standard_normal((n, *x.shape), dtype=dtype)
            noisy *= self.sigma
            noisy += x
            if self.clamp is not None:
                np.clip(noisy, *self.clamp, out=noisy)
        return noisy

    def describe(self) -> dict:
        return {"sigma": self.sigma, "clamp": list(self.clamp) if self.clamp else None,
                "denoiser": _describe_denoiser(self.denoiser)}


def _describe_denoiser(denoiser):
    """Its ``describe()``, else its qualified name (a repr would hold a memory address)."""
    if denoiser is None:
        return None
    describe = getattr(denoiser, "describe", None)
    if callable(describe):
        return describe()
    return f"{getattr(denoiser, '__module__', '?')}." \
           f"{getattr(denoiser, '__qualname__', type(denoiser).__qualname__)}"


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def as_numpy(x) -> np.ndarray:
    """A numpy view of an array-like or torch tensor (moved to the CPU)."""
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_like(x: np.ndarray, like):
    """``x`` as the same kind of array as ``like`` (torch tensor on its device, or numpy)."""
    if _is_torch(like):
        import torch

        return torch.as_tensor(x, device=like.device)
    return x


def as_tokens(tokens, name: str = "x_discrete", *, allow_empty: bool = False) -> np.ndarray:
    """A 1-D int64 token array, with clear errors for empty or non-integer input."""
    if isinstance(tokens, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of integer token ids, not a string "
                        "(tokenize it first)")
    arr = as_numpy(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size == 0:
        if allow_empty:
            return np.zeros(0, np.int64)
        raise ValueError(f"{name} must not be empty (the discrete part has no token)")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds token ids beyond the int64 range")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            if np.abs(arr).max() >= 2.0**62:
                raise ValueError(f"{name} holds token ids beyond the int64 range")
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer token ids, got dtype {arr.dtype} "
                             f"with non-integral values")
    return arr.astype(np.int64, copy=False)
