"""Counter-based noise streams: sample ``j`` is the same whatever the batch size or stopping point.

A stream is keyed by a root seed (for a run: ``SeedSequence([seed, example
index])``). Its samples are cut into fixed *blocks*; block ``b`` of phase
``phase`` (0: label selection, 1, 2, ...: estimates) is drawn from its own
Philox generator keyed by ``(root, phase, b)``. Sample ``j`` therefore
depends only on the root, the phase and ``j``: not on the batch size, on the
executor, on how many samples were drawn before, or on when a sequential
rule stopped. The torch path is seeded per block in the same way (a torch
generator seeded from the block's generator).

Block layout (``counter-v2``): 128, 128, 256, 512, ..., doubling up to
``block_max`` samples, then ``block_max`` each; block ends fall on powers of
two, which are looks of a sequential rule. ``block_max`` is 1024 unless one
sample is large: then it is the largest power of two (at least 4) whose
block of continuous noise fits in 64 MiB, and the first block is no larger.
The layout depends on the input's size, never on the batch size. Why 128
first: a block costs about 0.1 ms before its first sample (two generators
seeded, a few array calls), as much as 25 samples of a 28 x 28 image, and
most inputs of a sequential run stop near 100 samples. ``counter-v1`` began
with blocks of 4, 4, 8, 16, 32 and 64 samples: six blocks where one will do.
A request that stops inside a block leaves it cached for the next one.

``STREAM_VERSION`` names this layout. It is recorded in every certificate's
settings and in a run's settings, so a run made with other streams is not
silently extended with these.
"""

from __future__ import annotations

import numpy as np

__all__ = ["STREAM_VERSION", "NoiseStream", "block_edges"]

STREAM_VERSION = "counter-v2"
_FIRST_BLOCK = 128
_BLOCK_MIN = 4
_BLOCK_MAX = 1024
_BLOCK_BYTES = 64 << 20


def first_block(block_max: int = _BLOCK_MAX) -> int:
    """Samples of the first block: 128, or ``block_max`` where that is smaller."""
    return min(_FIRST_BLOCK, int(block_max))


def block_edges(stop: int, block_max: int = _BLOCK_MAX) -> np.ndarray:
    """Block boundaries ``0 = e_0 < e_1 < ...`` up to the first one ``>= stop``."""
    size = first_block(block_max)
    edges = [0, size]
    while edges[-1] < stop:
        edges.append(edges[-1] + size)
        size = min(2 * size, block_max)
    return np.asarray(edges, dtype=np.int64)


def block_max_for(sample_bytes: int) -> int:
    """Largest block (a power of two, 4 to 1024 samples) whose noise fits in 64 MiB."""
    fit = max(_BLOCK_BYTES // max(int(sample_bytes), 1), _BLOCK_MIN)
    return int(min(_BLOCK_MAX, 1 << (int(fit).bit_length() - 1)))


class NoiseStream:
    """The blocks of one example's noise, with the last block drawn kept for the next request.

    Parameters
    ----------
    random_state : None, int, SeedSequence or numpy Generator
        The root. A Generator is reduced to a key by drawing four 64-bit words from it.
    draw_block : callable ``(generator, size) -> (tokens or None, continuous or None)``
        Draws ``size`` noisy samples (the engine's kernels, in a fixed order).
    block_max : int
        Largest block (see :func:`block_max_for`).
    """

    def __init__(self, random_state, draw_block, block_max: int = _BLOCK_MAX):
        self.root = _root(random_state)
        self.draw_block = draw_block
        self.block_max = int(block_max)
        self._cache: tuple | None = None
        self._edges = block_edges(0, self.block_max)   # a prefix of the layout, grown on demand

    def generator(self, phase: int, block: int) -> np.random.Generator:
        seq = np.random.SeedSequence(self.root.entropy,
                                     spawn_key=(*self.root.spawn_key, int(phase), int(block)))
        return np.random.Generator(np.random.Philox(seq))

    def _block(self, phase: int, block: int, size: int):
        key = (phase, block)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.draw_block(self.generator(phase, block), size))
        return self._cache[1]

    def take(self, phase: int, start: int, stop: int):
        """Samples ``start..stop-1`` of ``phase``: ``(tokens, continuous)``, each None or stacked."""
        if not 0 <= start < stop:
            raise ValueError(f"need 0 <= start < stop, got {start}, {stop}")
        if self._edges[-1] < stop:   # grown geometrically: a run's looks reuse one layout
            self._edges = block_edges(max(stop, 2 * int(self._edges[-1])), self.block_max)
        edges = self._edges
        first = int(np.searchsorted(edges, start, side="right")) - 1
        pieces = []
        for b in range(first, len(edges) - 1):
            lo, hi = int(edges[b]), int(edges[b + 1])
            if lo >= stop:
                break
            tok, cont = self._block(phase, b, hi - lo)
            a, z = max(start, lo) - lo, min(stop, hi) - lo
            pieces.append((None if tok is None else tok[a:z], None if cont is None else cont[a:z]))
        return concat_batches([p[0] for p in pieces]), concat_batches([p[1] for p in pieces])

    @staticmethod
    def describe(block_max: int = _BLOCK_MAX) -> dict:
        return {"version": STREAM_VERSION, "first_block": first_block(block_max),
                "block_max": block_max}


def _root(random_state) -> np.random.SeedSequence:
    if isinstance(random_state, np.random.SeedSequence):
        return random_state
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(random_state.integers(0, 2**63, size=4).tolist())
    if random_state is None:
        return np.random.SeedSequence()
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be >= 0, got {random_state}")
        return np.random.SeedSequence(int(random_state))
    raise TypeError("random_state must be None, an int >= 0, a numpy SeedSequence or a Generator, "
                    f"got {type(random_state).__name__}")


def concat_batches(parts):
    """Batches (numpy or torch, or ``None`` for an absent part) joined along the first axis."""
    if parts[0] is None:
        return None
    if len(parts) == 1:
        return parts[0]
    if type(parts[0]).__module__.startswith("torch"):
        import torch

        return torch.cat(parts)
    return np.concatenate(parts)
