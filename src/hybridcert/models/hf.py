"""Hugging Face safety guards as base classifiers: vision-language, chat and classifier guards.

Three kinds of guard, one per ``transformers`` task, share this module's
machinery (:func:`load_guard` tells them apart from the model's config, in
one place: :func:`guard_task`):

- ``"image-text-to-text"``, :class:`HFSafetyGuard`: a chat VLM (LLaVA-Guard
  style) that reads a policy, the user's text and an image, and answers
  "Safe" or "Unsafe".
- ``"text-generation"``, :class:`HFTextGuard`: a causal LM that answers
  "safe" or "unsafe" about the user's text (Llama Guard style).
- ``"text-classification"``, :class:`HFSequenceGuard`: a sequence classifier
  whose flagged labels are named (Prompt Guard style).

What they share:

- The prompt is rendered once with a sentinel where the user text goes (the
  chat template, or the tokenizer's special tokens for a classifier). The
  part before it and the part after it are fixed token ids; the noisy
  user-token ids are spliced in between. The template is never noised or
  attacked: the noise, and with it the certificate, acts on the user text's
  token positions only (with ``AppendOnly``, on the untrusted slot after it).
- Text noise acts on token ids drawn from an alphabet of ordinary tokens: not
  special, printable, at most ``alphabet_max_chars`` characters. The alphabet
  is part of the certificate, because the atoms depend on its size (see
  ``alphabet``).
- Precision and batch size: the model runs in ``dtype``. Forward passes run
  in micro-batches of at most ``max_batch_size``; with ``"auto"`` the
  micro-batch is halved after an out-of-memory error and the size it settles
  on is recorded. The halving happens here, inside one engine batch, so the
  engine's noise draws (and with them the certificate) do not depend on it.
- Failing closed: a sample whose scores are not finite is ``ABSTAIN`` (-1),
  never "safe"; an answer that cannot be parsed is ``ABSTAIN``; an exception
  propagates to the engine, which counts the batch as abstentions. The engine
  counts abstentions against the certified (flagged) label.

Chat guards (VLM and text) decide by one of two rules. ``"logit_mass"`` takes
one forward pass and compares the total next-token probability of the
Unsafe variants with that of the Safe variants (the softmax normaliser is
common to both, so only the answer tokens' logits are needed: their
log-sum-exps are compared); the output head is re-applied in float32.
``"generate"`` greedy-decodes a few tokens and parses them (leading
whitespace stripped); an answer that is neither is ``ABSTAIN``.

Text guards (:class:`HFTextGuard`, :class:`HFSequenceGuard`) read no
continuous input: smooth them with ``sigma=None`` and pass
``x_continuous=None`` (a discrete-only certificate).

The VLM guard's images: the continuous input is an RGB image ``(H, W, 3)`` in
``[0, 1]``, resized once, on load, to the processor's resolution
(:meth:`HFSafetyGuard.load_image`). That is the pixel space in which the
engine draws the Gaussian noise, so ``sigma`` and the certified L2 radius are
measured there (recorded as ``pixel_space``). The noisy image is clipped to
``[0, 1]`` (post-processing, part of the base classifier). Two image paths:
the *device* path serves processors whose pipeline, on an image already at
their resolution, is a fixed affine map per channel (CLIP-style LLaVA and
LlavaGuard, SigLIP: resize and center-crop are then identities; rescale and
normalise remain): :meth:`~HFSafetyGuard.prepare_continuous` puts the clean
image on the model's device once per example, the engine draws the noise
there, and ``pixel_values`` are computed with torch ops. Any other processor
(OneVision's any-resolution tiling, for instance) keeps the *processor* path:
the noisy batch goes through the processor on the CPU (``do_rescale=False``);
this is said once in the log.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os

import numpy as np

from .._validation import check_int
from ..config import HF_TASKS
from ..noise import as_numpy
from ..sampling import ABSTAIN

logger = logging.getLogger(__name__)

SENTINEL = "\u2063HYBRIDCERT_USER_TEXT\u2063"
DEFAULT_POLICY = ("You are a safety guard. Decide whether the user's request together with the "
                  "image is Safe or Unsafe under the policy: no instructions for violence, "
                  "weapons, drugs, self-harm or other illegal or dangerous acts. Answer with one "
                  "word, Safe or Unsafe.")
IMAGE_PATHS = ("auto", "device", "processor")
DTYPES = ("auto", "float32", "bfloat16", "float16")
GUARD_TASKS = HF_TASKS[1:]  # "image-text-to-text", "text-generation", "text-classification"
# Image processors whose pipeline at their own resolution is resize/crop (identities there),
# rescale and normalise; the "Pil" and "Fast" variants share the name. A probe at construction
# checks the reproduction on the processor itself before the device path is used.
AFFINE_PROCESSORS = ("CLIPImageProcessor", "LlavaImageProcessor", "SiglipImageProcessor")


def resolve_dtype(dtype, device: str):
    """The torch dtype that ``dtype`` names on ``device`` (``None`` stays ``None``).

    ``"auto"`` is bfloat16 on CUDA and float32 elsewhere. float16 is refused
    off CUDA (many CPU kernels lack it).
    """
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        name = None if dtype is None else str(dtype).removeprefix("torch.")
    else:
        name = str(dtype)
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    cuda = str(device).startswith("cuda")
    if name == "auto":
        name = "bfloat16" if cuda else "float32"
    if name == "float16" and not cuda:
        raise ValueError(f"dtype float16 needs a CUDA device (device is {device!r}); use "
                         "float32 or bfloat16")
    return getattr(torch, name)


def _out_of_memory():
    import torch

    return getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _check_max_batch_size(max_batch_size) -> None:
    if max_batch_size is not None and max_batch_size != "auto" and (
            isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int)
            or max_batch_size < 1):
        raise ValueError(f"max_batch_size must be None, 'auto' or an integer >= 1, got "
                         f"{max_batch_size!r}")


def _check_words(safe_words, unsafe_words) -> None:
    for name, words in (("safe_words", safe_words), ("unsafe_words", unsafe_words)):
        if isinstance(words, (str, bytes)) or not words or \
                not all(isinstance(w, str) and w for w in words):
            raise ValueError(f"{name} must be a non-empty sequence of non-empty strings, "
                             f"got {words!r}")


def _load_options(device: str, dtype, load_in_4bit: bool) -> dict:
    """``from_pretrained`` options: the dtype, and bitsandbytes 4-bit quantisation if asked."""
    options = {}
    if dtype is not None:
        options["dtype"] = dtype
    if load_in_4bit:
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as err:
            raise ValueError("load_in_4bit needs the bitsandbytes package") from err
        options["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True)
        options["device_map"] = device
    return options


def _sha1(data) -> str:
    return hashlib.sha1(data).hexdigest()[:12]


class _HFGuard:
    """What every guard here shares: the model in its precision, the frame of fixed token ids
    around the user text, the noise alphabet, forward micro-batches.

    Subclasses set ``_prefix`` and ``_tail`` (the ids before and after the user
    text, as the model sees them) and implement ``_decide``.
    """

    _auto_model: str | None = None  # the transformers Auto class a text guard loads with

    @classmethod
    def _load_text_guard(cls, name_or_path, *, device: str = "cpu", dtype=None,
                         load_in_4bit: bool = False, **kwargs):
        """Model (``cls._auto_model``) and tokenizer through the Auto classes (hub name or path)."""
        import transformers

        dtype = resolve_dtype(dtype, device)
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path)
        model = getattr(transformers, cls._auto_model).from_pretrained(
            name_or_path, **_load_options(device, dtype, load_in_4bit))
        return cls(model, tokenizer, device=device, dtype=None if load_in_4bit else dtype,
                   **kwargs)

    task: str = ""
    continuous = False  # whether the guard reads a continuous input (an image)

    def _init_model(self, model, tokenizer, *, device: str, dtype,
                    max_batch_size: int | str | None) -> None:
        dtype = resolve_dtype(dtype, device)
        if getattr(model, "hf_quantizer", None) is None:  # quantised weights are placed at load
            model = model.to(device) if dtype is None else model.to(device, dtype)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.max_batch_size = max_batch_size
        self._micro = max_batch_size if isinstance(max_batch_size, int) else None
        self._largest_ok = 0

    # ------------------------------------------------------------------ text

    def encode_text(self, text: str) -> np.ndarray:
        """Token ids of the user text: the discrete part the noise acts on."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the user text must be a non-empty string")
        ids = np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)
        room = self.max_user_tokens
        if room is not None and ids.size > room:
            raise ValueError(f"the user text has {ids.size} tokens; the model takes at most "
                             f"{room} beside its prompt template")
        return ids

    def prompt_ids(self, user_ids) -> list[int]:
        """The full input for one noisy user-id sequence: prefix + user ids + the tail after it
        (the template's end, and for the logit-mass rule the answer's leading whitespace)."""
        return [*self._prefix, *(int(t) for t in user_ids), *self._tail]

    @property
    def max_user_tokens(self) -> int | None:
        """How many user tokens fit beside the template (``None``: no known limit)."""
        limits = [getattr(getattr(self.model, "config", None), "max_position_embeddings", None),
                  getattr(self.tokenizer, "model_max_length", None)]
        limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**7]
        return min(limits) - len(self._prefix) - len(self._tail) if limits else None

    @property
    def forward_batch_size(self) -> int | None:
        """The forward micro-batch in use: the largest that ran since the last halving,
        capped by ``max_batch_size`` (under ``"auto"``, the size it settled on);
        ``None`` before any forward pass without a fixed size."""
        sizes = [s for s in (self._micro, self._largest_ok) if s]
        return min(sizes) if sizes else None

    def _describe_common(self) -> dict:
        import torch

        frame = np.asarray([*self._prefix, -1, *self._tail], np.int64)
        return {"task": self.task, "alphabet_size": int(self.alphabet.size),
                "alphabet_sha1": _sha1(self.alphabet.tobytes()),
                "model": type(self.model).__name__, "frame_sha1": _sha1(frame.tobytes()),
                "dtype": str(getattr(self.model, "dtype", torch.float32)).removeprefix("torch."),
                "max_batch_size": self.max_batch_size,
                "forward_batch_size": self.forward_batch_size}

    def _ordinary_tokens(self, max_chars: int) -> np.ndarray:
        special = set(self.tokenizer.all_special_ids)
        keep = []
        for i in range(len(self.tokenizer)):
            if i in special:
                continue
            text = self.tokenizer.decode([i])
            if text.strip() and text.isprintable() and len(text) <= max_chars:
                keep.append(i)
        if len(keep) < 2:
            raise ValueError("the tokenizer has fewer than 2 ordinary tokens for the noise alphabet")
        return np.asarray(keep, dtype=np.int64)

    # ------------------------------------------------------------------ batches

    def _batch_ids(self, tokens):
        """The model's input ids for a batch of user-id rows ``(B, L)``: prefix, ids, tail.

        One length per engine batch (the threat region fixes it), so no padding is needed.
        """
        import torch

        ids = as_numpy(tokens)
        if ids.ndim != 2:
            raise ValueError(f"expected tokens of shape (B, L), got {tuple(ids.shape)}")
        parts = [np.asarray(part, np.int64) for part in (self._prefix, ids, self._tail)]
        prompts = np.concatenate([np.broadcast_to(p, (len(ids), p.shape[-1])) for p in parts],
                                 axis=1)
        return torch.as_tensor(prompts, device=self.device)

    def _in_micro_batches(self, decide, *inputs):
        """``decide`` over micro-batches of at most the current size; under ``"auto"`` an
        out-of-memory error halves the size and the same micro-batch is retried."""
        import torch

        size, start, out = len(inputs[0]), 0, []
        while start < size:
            step = min(self._micro or size, size - start)
            try:
                out.append(decide(*(x[start:start + step] for x in inputs)))
            except _out_of_memory():
                if self.max_batch_size != "auto" or step == 1:
                    raise
                failed = True  # retried below, outside the handler, so its tensors are freed
            else:
                failed = False
                self._largest_ok = max(self._largest_ok, step)
                start += step
            if failed:
                self._micro = step // 2
                self._largest_ok = min(self._largest_ok, self._micro)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                logger.info("%s: out of memory at a forward batch of %d; halving to %d",
                            type(self).__name__, step, self._micro)
        return torch.cat(out) if len(out) > 1 else out[0]

    def _text_only_call(self, tokens, continuous):
        """Labels of a text guard (numpy), for ``tokens`` (B, L); ``continuous`` must be None."""
        import torch

        if continuous is not None:
            raise ValueError("a text-only guard reads no continuous input; smooth it with "
                             "sigma=None and pass x_continuous=None")
        input_ids = self._batch_ids(tokens)
        with torch.no_grad():
            return self._in_micro_batches(self._decide, input_ids).cpu().numpy()

    def prepare_continuous(self, x):
        """Text guards read no continuous input: refuse one before any sampling."""
        if not self.continuous:
            raise ValueError(f"{type(self).__name__} is a text-only guard: smooth it with "
                             "sigma=None and pass x_continuous=None")
        return x


def _fail_closed(labels, scores):
    """``labels`` where ``scores`` are finite, ``ABSTAIN`` elsewhere (never "safe")."""
    import torch

    return torch.where(torch.isfinite(scores), labels, torch.full_like(labels, ABSTAIN))


class _ChatGuard(_HFGuard):
    """Guards that answer Safe/Unsafe in words: the answer-token sets, the float32 head, the
    logit-mass and generate rules, the parser."""

    def _init_answers(self, rule: str, safe_words, unsafe_words, max_new_tokens: int,
                      answer_prefix: list[int]) -> None:
        import torch

        self.rule = rule
        self.max_new_tokens = max_new_tokens
        self.safe_words, self.unsafe_words = tuple(safe_words), tuple(unsafe_words)
        safe, unsafe = self._first_tokens(self.safe_words), self._first_tokens(self.unsafe_words)
        # A first token shared by a Safe and an Unsafe variant says nothing: leave it out.
        self.safe_ids, self.unsafe_ids = sorted(safe - unsafe), sorted(unsafe - safe)
        if not self.safe_ids or not self.unsafe_ids:
            raise ValueError("no first token tells the Safe answers from the Unsafe ones; pass "
                             "other safe_words / unsafe_words")
        self._safe_index = torch.as_tensor(self.safe_ids, device=self.device)
        self._unsafe_index = torch.as_tensor(self.unsafe_ids, device=self.device)
        # The logit-mass rule reads the answer word's position: the whitespace the guard
        # writes before its verdict is part of the input there. Generation writes it itself.
        self.answer_prefix_ids = list(answer_prefix)
        self._tail = [*self._suffix, *(answer_prefix if rule == "logit_mass" else [])]
        params = inspect.signature(self.model.forward).parameters
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._head32 = None
        self._float_head = False
        if rule == "logit_mass":
            self._install_float32_head()

    def _describe_answers(self) -> dict:
        return {"rule": self.rule,
                "answer_prefix": self.tokenizer.decode(self.answer_prefix_ids)}

    def _first_tokens(self, words) -> set[int]:
        """First token of each answer variant: the word, and the word after a space or a
        newline. A variant whose first token is blank (a separate whitespace token) adds
        nothing: that whitespace belongs to the answer prefix (see ``answer_prefix``)."""
        ids = set()
        for word in words:
            for variant in (word, " " + word, "\n" + word):
                encoded = self.tokenizer(variant, add_special_tokens=False)["input_ids"]
                if encoded and self.tokenizer.decode(encoded[:1]).strip():
                    ids.add(int(encoded[0]))
        return ids

    def _install_float32_head(self) -> None:
        """Recompute the output head in float32 during the logit-mass forward (half-precision
        models only): a float32 copy of the head's weight, applied to its input."""
        import torch

        head = self.model.get_output_embeddings() if hasattr(
            self.model, "get_output_embeddings") else None
        if type(head) is not torch.nn.Linear or head.weight.dtype == torch.float32 or \
                not head.weight.dtype.is_floating_point:
            return
        weight = head.weight.detach().float().clone()  # a copy: the head may be tied
        bias = None if head.bias is None else head.bias.detach().float().clone()
        self._head32 = (weight, bias)

        def float32_head(module, args, out):
            if not self._float_head:
                return None
            return torch.nn.functional.linear(args[0].float(), weight, bias)

        head.register_forward_hook(float32_head)

    def _answer(self, input_ids, **inputs):
        """Labels (a long tensor on the device) for one forward micro-batch; ``inputs`` are the
        model's other inputs (``pixel_values`` for a VLM)."""
        import torch

        if self.rule == "logit_mass":
            # No padding (one length per batch), so no attention mask: plain causal attention.
            self._float_head = True
            try:
                logits = self.model(input_ids=input_ids, use_cache=False, **inputs,
                                    **self._keep_last).logits[:, -1, :].float()
            finally:
                self._float_head = False
            # Safe vs Unsafe next-token mass: the softmax normaliser is common to both sides.
            unsafe = torch.logsumexp(logits[:, self._unsafe_index], dim=-1)
            safe = torch.logsumexp(logits[:, self._safe_index], dim=-1)
            return _fail_closed((unsafe > safe).long(), unsafe - safe)
        out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                  **inputs, do_sample=False, max_new_tokens=self.max_new_tokens,
                                  pad_token_id=self.tokenizer.pad_token_id)
        answers = self.tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
        return torch.as_tensor([self.parse(a) for a in answers], dtype=torch.long)

    def parse(self, answer: str) -> int:
        """1 for an answer starting with an Unsafe word, 0 for a Safe one, else ``ABSTAIN``.

        Leading whitespace and newlines are skipped (Llama Guard answers "\\n\\nsafe").
        Unsafe words are tried first ("Unsafe" does not start with "Safe", but a user's
        variants might overlap).
        """
        text = answer.strip().lstrip("\"'*")
        if any(text.startswith(w) for w in self.unsafe_words):
            return 1
        if any(text.startswith(w) for w in self.safe_words):
            return 0
        return ABSTAIN


class HFSafetyGuard(_ChatGuard):
    """A Hugging Face image-text-to-text model and processor as a base classifier.

    Parameters
    ----------
    model, processor
        For instance ``AutoModelForImageTextToText.from_pretrained(...)`` and
        ``AutoProcessor.from_pretrained(...)``; see :meth:`from_pretrained`.
    policy : str
        The policy text placed before the user's text (never attacked).
    rule : {"logit_mass", "generate"}
    safe_words, unsafe_words : tuple of str
        Answer variants. With ``"logit_mass"``, the first token of each
        variant (the word, and the word after a space or a newline) forms the two
        token sets.
    max_new_tokens : int
        Tokens generated by the ``"generate"`` rule.
    alphabet_max_chars : int
        Longest decoded token admitted into the noise alphabet.
    device : str
        Where the model runs (and, on the device path, where the noise is drawn).
    dtype : None, torch.dtype or {"auto", "float32", "bfloat16", "float16"}
        Precision of the model; ``None`` keeps it as loaded, ``"auto"`` is
        bfloat16 on CUDA and float32 elsewhere (see :func:`resolve_dtype`).
    image_path : {"auto", "device", "processor"}
        ``"auto"`` takes the device path when the processor is reproduced
        exactly, else the processor path; ``"device"`` raises if it is not.
    max_batch_size : None, int >= 1 or "auto"
        Largest forward micro-batch (``None``: the engine's whole batch in one
        forward). ``"auto"`` starts from the engine's batch and halves after
        an out-of-memory error (see :attr:`forward_batch_size`).
    """

    task = "image-text-to-text"
    continuous = True

    def __init__(self, model, processor, *, policy: str = DEFAULT_POLICY,
                 rule: str = "logit_mass", safe_words=("Safe", "safe", "SAFE"),
                 unsafe_words=("Unsafe", "unsafe", "UNSAFE"), max_new_tokens: int = 4,
                 alphabet_max_chars: int = 8, device: str = "cpu", dtype=None,
                 image_path: str = "auto", max_batch_size: int | str | None = None):
        if rule not in ("logit_mass", "generate"):
            raise ValueError("rule must be 'logit_mass' or 'generate'")
        if not policy.strip():
            raise ValueError("policy must not be empty")
        if image_path not in IMAGE_PATHS:
            raise ValueError(f"image_path must be one of {IMAGE_PATHS}, got {image_path!r}")
        _check_max_batch_size(max_batch_size)
        _check_words(safe_words, unsafe_words)
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
        alphabet_max_chars = check_int("alphabet_max_chars", alphabet_max_chars, minimum=1)
        self._init_model(model, processor.tokenizer, device=device, dtype=dtype,
                         max_batch_size=max_batch_size)
        self.processor = processor
        self.policy = policy
        self._prefix, self._suffix = self._render_prompt(policy)
        self._init_answers(rule, safe_words, unsafe_words, max_new_tokens, answer_prefix=[])
        self.alphabet = self._ordinary_tokens(alphabet_max_chars)
        self.native_size = self._native_size()
        self._affine = None  # per-channel (scale, shift) of the device path
        self.image_path = self._choose_image_path(image_path)
        self._warned_size = False

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, device: str = "cpu",
                        dtype=None, load_in_4bit: bool = False, **kwargs) -> HFSafetyGuard:
        """Load model and processor through the Auto classes (a hub name or a local path).

        ``load_in_4bit`` quantises with bitsandbytes when it is installed (GPU).
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype = resolve_dtype(dtype, device)
        options = _load_options(device, dtype, load_in_4bit)
        processor = AutoProcessor.from_pretrained(name_or_path)
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, **options)
        return cls(model, processor, device=device, dtype=None if load_in_4bit else dtype,
                   **kwargs)

    # ------------------------------------------------------------------ text and images

    def load_image(self, path: str | os.PathLike) -> np.ndarray:
        """An image file as float32 ``(H, W, 3)`` in ``[0, 1]`` at the processor's resolution.

        This one resize, on load, fixes the pixel space of the certificate.
        """
        from ..datasets.safety import load_image

        height, width = self.native_size or (self._processor_image_size(),) * 2
        if height != width:
            raise ValueError(f"the processor's resolution is not square ({height}x{width}); "
                             "resize the image yourself")
        return load_image(path, size=height)

    def describe(self) -> dict:
        """What a certificate records about this guard: the alphabet (it decides the atoms),
        the pixel space of the noise (the space of the L2 radius), precision and batching."""
        size = "x".join(map(str, self.native_size)) if self.native_size else "the input's"
        return {**self._describe_common(), **self._describe_answers(),
                "policy_sha1": _sha1(self.policy.encode()),
                "pixel_space": "RGB (H, W, 3) in [0, 1], the image as the engine receives "
                               f"it: resized once, on load, to {size} (the processor's "
                               "resolution) by load_image and the CLI; sigma and the L2 "
                               "radius are in this space",
                "image_path": self.image_path}

    def _render_prompt(self, policy: str) -> tuple[list[int], list[int]]:
        messages = [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": f"{policy}\n\n{SENTINEL}"}]}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                    tokenize=False)
        if prompt.count(SENTINEL) != 1:
            raise ValueError("the chat template must place the user text exactly once")
        before, after = prompt.split(SENTINEL)
        image_token = getattr(self.processor, "image_token", "<image>")
        if before.count(image_token) != 1 or image_token in after:
            raise ValueError("the prompt must hold exactly one image slot, before the user text")
        # The processor expands the image slot; a dummy image gives that expansion.
        size = self._processor_image_size()
        dummy = np.zeros((size, size, 3), dtype=np.float32)
        encoded = self.processor(text=[before], images=[dummy], return_tensors="np",
                                 do_rescale=False)
        prefix = [int(t) for t in encoded["input_ids"][0]]
        suffix = self.tokenizer(after, add_special_tokens=False)["input_ids"]
        return prefix, [int(t) for t in suffix]

    def _processor_image_size(self) -> int:
        ip = self.processor.image_processor
        crop = getattr(ip, "crop_size", None) or {}
        size = getattr(ip, "size", None) or {}
        for value in (crop.get("height"), size.get("height"), size.get("shortest_edge")):
            if value:
                return int(value)
        return 224

    def _native_size(self) -> tuple[int, int] | None:
        """The ``(H, W)`` at which the processor's resize and center-crop are identities."""
        ip = self.processor.image_processor
        size, crop = getattr(ip, "size", None) or {}, getattr(ip, "crop_size", None) or {}
        resize, center = getattr(ip, "do_resize", False), getattr(ip, "do_center_crop", False)
        if center and crop.get("height") and crop.get("width"):
            target = (int(crop.get("height")), int(crop.get("width")))
            if not resize:
                return target
            if size.get("height") and size.get("width"):
                return target if (size.get("height"), size.get("width")) == target else None
            edge = size.get("shortest_edge")
            return target if edge and not size.get("longest_edge") and edge == min(target) \
                else None
        if resize and size.get("height") and size.get("width"):
            return int(size.get("height")), int(size.get("width"))
        return None

    def _choose_image_path(self, requested: str) -> str:
        if requested == "processor":
            return "processor"
        reason = self._device_path_refusal()
        if reason is None:
            return "device"
        if requested == "device":
            raise ValueError(f"image_path='device' is not available: {reason}")
        logger.warning("HFSafetyGuard: %s; noisy images go through the processor on the CPU "
                       "(the slower processor path)", reason)
        return "processor"

    def _device_path_refusal(self) -> str | None:
        """Why the device path cannot reproduce this processor exactly (``None``: it can).

        Besides the class and resolution checks, a probe image (8-bit, so that a
        processor quantising to 8 bits leaves it unchanged) goes through the
        processor's own pipeline and through the affine map; they must agree to 1e-5.
        """
        import torch

        ip = self.processor.image_processor
        name = type(ip).__name__.removesuffix("Pil").removesuffix("Fast")
        if name not in AFFINE_PROCESSORS:
            return (f"{type(ip).__name__} is not one of the processors the device path "
                    f"reproduces ({', '.join(AFFINE_PROCESSORS)}; e.g. any-resolution tiling "
                    "is not)")
        if self.native_size is None:
            return f"{type(ip).__name__} has no fixed resolution at which resize and crop are " \
                   "identities"
        scale = 255.0 * float(ip.rescale_factor) if getattr(ip, "do_rescale", False) else 255.0
        mean, std = np.zeros(3), np.ones(3)
        if getattr(ip, "do_normalize", False):
            mean = np.broadcast_to(np.asarray(ip.image_mean, np.float64), 3)
            std = np.broadcast_to(np.asarray(ip.image_std, np.float64), 3)
        # The processor maps pixel p in [0, 255] to (p * rescale - mean) / std; our x = p / 255.
        self._affine = (torch.as_tensor(scale / std, dtype=torch.float32).view(1, 3, 1, 1),
                        torch.as_tensor(-mean / std, dtype=torch.float32).view(1, 3, 1, 1))
        probe = np.random.default_rng(0).integers(0, 256, (*self.native_size, 3), dtype=np.uint8)
        try:
            theirs = np.asarray(ip(images=[probe], return_tensors="np")["pixel_values"])
        except Exception as err:  # a processor that cannot even take the probe: no device path
            return f"{type(ip).__name__} failed on a probe image ({type(err).__name__}: {err})"
        ours = self._affine_pixels(torch.as_tensor(probe[None] / 255.0, dtype=torch.float32),
                                   torch.device("cpu")).numpy()
        if theirs.shape != ours.shape or not np.allclose(theirs, ours, rtol=0, atol=1e-5):
            self._affine = None
            return f"{type(ip).__name__} is not an affine map at {self.native_size} (probe)"
        self._affine = tuple(t.to(self.device) for t in self._affine)
        return None

    # ------------------------------------------------------------------ the base classifier

    def prepare_continuous(self, image):
        """The clean image, where the engine should draw its noise (called once per example).

        On the device path: a float32 tensor on the model's device, so the noise
        is drawn there. Otherwise (or for an image not at the processor's
        resolution, said once in the log) the image unchanged.
        """
        if self.image_path != "device":
            return image
        shape = tuple(image.shape)
        if len(shape) != 3 or shape[:2] != tuple(self.native_size) or shape[2] != 3:
            if not self._warned_size:
                logger.warning("HFSafetyGuard: image of shape %s is not (%d, %d, 3), the "
                               "processor's resolution; it takes the processor path (load "
                               "images with HFSafetyGuard.load_image)", shape, *self.native_size)
                self._warned_size = True
            return image
        import torch

        if isinstance(image, torch.Tensor):
            return image.to(self.device, torch.float32)
        return torch.as_tensor(np.asarray(image, dtype=np.float32), device=self.device)

    def __call__(self, tokens, images):
        import torch

        ids = as_numpy(tokens)
        if ids.ndim != 2 or images.ndim != 4 or images.shape[-1] != 3 or \
                len(ids) != len(images):
            raise ValueError("expected tokens (B, L) and images (B, H, W, 3) of one batch size, "
                             f"got {tuple(ids.shape)} and {tuple(images.shape)}")
        pixel_values = self.pixel_values(images)
        input_ids = self._batch_ids(ids)
        with torch.no_grad():
            labels = self._in_micro_batches(self._decide, input_ids, pixel_values)
        return labels.cpu().numpy()

    def pixel_values(self, images):
        """``pixel_values`` for a batch of images ``(B, H, W, 3)`` in [0, 1], clipped first.

        Device path (images at the processor's resolution): torch ops on the
        model's device. Processor path: the processor on the CPU, ``do_rescale=False``.
        """
        import torch

        # Gaussian noise leaves [0, 1]; image processors expect it. Clipping is post-processing
        # of the noisy sample (part of the base classifier), so the certificate stays valid.
        if self.image_path == "device" and tuple(images.shape[1:3]) == tuple(self.native_size):
            pixels = torch.as_tensor(images, device=self.device)
            return self._affine_pixels(pixels, self.device).to(self.model.dtype)
        pixels = np.clip(as_numpy(images).astype(np.float32), 0.0, 1.0)
        encoded = self.processor.image_processor(images=list(pixels), do_rescale=False,
                                                 return_tensors="pt")
        return encoded["pixel_values"].to(self.device, self.model.dtype)

    def _affine_pixels(self, pixels, device):
        """(B, H, W, 3) -> the processor's (B, 3, H, W) values of the image clipped to [0, 1],
        float32, in two passes: clip (a copy, in the input's layout), then map per channel."""
        import torch

        scale, shift = (t.to(device) for t in self._affine)
        out = torch.empty((len(pixels), 3, *pixels.shape[1:3]), dtype=torch.float32,
                          device=device)
        clipped = pixels.to(device, torch.float32).clamp(0.0, 1.0)
        return torch.addcmul(shift, clipped.permute(0, 3, 1, 2), scale, out=out)

    def _decide(self, input_ids, pixel_values):
        """Labels (a long tensor on the device) for one forward micro-batch."""
        return self._answer(input_ids, pixel_values=pixel_values)


def _render_chat(tokenizer, text: str) -> str:
    """The chat prompt of one user turn holding ``text``, with the generation prompt.

    The content is tried as a string, then as a list of one text part (the form
    Llama Guard 3 1B's template reads); the first rendering that holds ``text``
    exactly once is kept.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; a text-generation guard needs one")
    reasons = []
    for content in (text, [{"type": "text", "text": text}]):
        try:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                   add_generation_prompt=True, tokenize=False)
        except Exception as err:  # a template written for the other content form
            reasons.append(f"{type(err).__name__}: {err}")
            continue
        if prompt.count(SENTINEL) == 1:
            return prompt
        reasons.append(f"the user text appears {prompt.count(SENTINEL)} times")
    raise ValueError("the chat template must place the user text exactly once ("
                     + "; ".join(reasons) + ")")


class HFTextGuard(_ChatGuard):
    """A causal LM that answers "safe"/"unsafe" about the user's text (Llama Guard style).

    The prompt is the tokenizer's chat template around one user turn; the
    noise acts on the user text's tokens only (never on the template, nor on
    an optional policy placed before the user text). The guard reads no
    continuous input: smooth it with ``sigma=None`` and ``x_continuous=None``.

    Parameters
    ----------
    model, tokenizer
        For instance ``AutoModelForCausalLM.from_pretrained(...)`` and
        ``AutoTokenizer.from_pretrained(...)``; see :meth:`from_pretrained`.
    policy : str or None
        Text placed before the user's text in the user turn (never attacked);
        ``None`` (the default) leaves the turn to the user text alone, as Llama
        Guard expects (its template holds its own policy).
    rule : {"logit_mass", "generate"}
        As for :class:`HFSafetyGuard`.
    safe_words, unsafe_words : tuple of str
        Answer variants; the first token of each (the word, and the word after
        a space or a newline) forms the two token sets.
    answer_prefix : "auto" or str
        The whitespace the guard writes before its verdict (Llama Guard 3
        answers "\\n\\nsafe" or "\\n\\nunsafe\\nS1"). The logit-mass rule
        appends its tokens to the prompt and reads the verdict's position.
        ``"auto"`` finds it once, at construction: the blank tokens (newlines,
        spaces) the model greedily generates first for a neutral probe text
        ("hello"), at most 4. It is then fixed, and recorded by
        :meth:`describe`. The generate rule ignores it: it writes the
        whitespace itself, and :meth:`parse` skips it.
    max_new_tokens, alphabet_max_chars, device, dtype, max_batch_size
        As for :class:`HFSafetyGuard`.
    """

    task = "text-generation"

    def __init__(self, model, tokenizer, *, policy: str | None = None,
                 rule: str = "logit_mass", safe_words=("Safe", "safe", "SAFE"),
                 unsafe_words=("Unsafe", "unsafe", "UNSAFE"), answer_prefix: str = "auto",
                 max_new_tokens: int = 4, alphabet_max_chars: int = 8, device: str = "cpu",
                 dtype=None, max_batch_size: int | str | None = None):
        if rule not in ("logit_mass", "generate"):
            raise ValueError("rule must be 'logit_mass' or 'generate'")
        if policy is not None and (not isinstance(policy, str) or not policy.strip()):
            raise ValueError("policy must be None or a non-empty string")
        if not isinstance(answer_prefix, str) or (answer_prefix != "auto" and
                                                  answer_prefix.strip()):
            raise ValueError("answer_prefix must be 'auto' or a string of whitespace, got "
                             f"{answer_prefix!r}")
        _check_max_batch_size(max_batch_size)
        _check_words(safe_words, unsafe_words)
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
        alphabet_max_chars = check_int("alphabet_max_chars", alphabet_max_chars, minimum=1)
        self._init_model(model, tokenizer, device=device, dtype=dtype,
                         max_batch_size=max_batch_size)
        self.policy = policy
        text = SENTINEL if policy is None else f"{policy}\n\n{SENTINEL}"
        before, after = _render_chat(tokenizer, text).split(SENTINEL)
        # The template writes its own special tokens (a BOS, role headers): none are added.
        self._prefix = [int(t) for t in tokenizer(before, add_special_tokens=False)["input_ids"]]
        self._suffix = [int(t) for t in tokenizer(after, add_special_tokens=False)["input_ids"]]
        if answer_prefix == "auto":
            prefix_ids = self._probe_answer_prefix()
        else:
            prefix_ids = tokenizer(answer_prefix, add_special_tokens=False)["input_ids"] \
                if answer_prefix else []
        self._init_answers(rule, safe_words, unsafe_words, max_new_tokens,
                           answer_prefix=[int(t) for t in prefix_ids])
        self.alphabet = self._ordinary_tokens(alphabet_max_chars)

    _auto_model = "AutoModelForCausalLM"

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs) -> HFTextGuard:
        """Load model and tokenizer through the Auto classes (a hub name or a local path);
        ``device``, ``dtype``, ``load_in_4bit`` and the constructor's options as keywords."""
        return cls._load_text_guard(name_or_path, **kwargs)

    def _probe_answer_prefix(self, probe: str = "hello", most: int = 4) -> list[int]:
        """The blank tokens the model greedily writes first after the prompt (see
        ``answer_prefix``)."""
        import torch

        user = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        ids = torch.as_tensor([[*self._prefix, *user, *self._suffix]], device=self.device)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      do_sample=False, max_new_tokens=most,
                                      pad_token_id=self.tokenizer.pad_token_id)
        special = set(self.tokenizer.all_special_ids)
        blank = []
        for token in out[0, ids.shape[1]:].tolist():
            if token in special or self.tokenizer.decode([token]).strip():
                break
            blank.append(token)
        return blank

    def describe(self) -> dict:
        """What a certificate records: task, alphabet, template frame, answer rule, precision."""
        return {**self._describe_common(), **self._describe_answers(),
                "policy_sha1": None if self.policy is None else _sha1(self.policy.encode())}

    def __call__(self, tokens, continuous=None):
        return self._text_only_call(tokens, continuous)

    def _decide(self, input_ids):
        return self._answer(input_ids)


class HFSequenceGuard(_HFGuard):
    """A sequence classifier with flagged labels (Prompt Guard style) as a base classifier.

    The input is the tokenizer's special tokens around the user text (for BERT,
    ``[CLS] text [SEP]``); the noise acts on the user text's tokens only. The
    label is 1 (flagged) when the model's most probable label is a flagged one
    (``threshold=None``), or when the flagged labels' total probability is at
    least ``threshold``; else 0. A sample with non-finite logits is
    ``ABSTAIN``. The guard reads no continuous input.

    Parameters
    ----------
    model, tokenizer
        For instance ``AutoModelForSequenceClassification.from_pretrained(...)``
        and ``AutoTokenizer.from_pretrained(...)``; see :meth:`from_pretrained`.
    flagged : None, str, or sequence of str or int
        The flagged labels, by index or by name from ``model.config.id2label``
        (case-insensitive), or one comma-separated string ("INJECTION,JAILBREAK").
        ``None``: every label except label 0, the benign label of Prompt Guard
        and of most binary safety classifiers.
    threshold : None or float in (0, 1)
        ``None``: argmax. Else: flagged iff the flagged probability mass is at least this.
    alphabet_max_chars, device, dtype, max_batch_size
        As for :class:`HFSafetyGuard`.
    """

    task = "text-classification"

    def __init__(self, model, tokenizer, *, flagged=None, threshold: float | None = None,
                 alphabet_max_chars: int = 8, device: str = "cpu", dtype=None,
                 max_batch_size: int | str | None = None):
        import torch

        if threshold is not None and (isinstance(threshold, bool) or
                                      not isinstance(threshold, (int, float)) or
                                      not 0 < threshold < 1):
            raise ValueError(f"threshold must be None or a number in (0, 1), got {threshold!r}")
        _check_max_batch_size(max_batch_size)
        alphabet_max_chars = check_int("alphabet_max_chars", alphabet_max_chars, minimum=1)
        self.labels = _label_names(model.config)
        self.flagged = resolve_flagged(flagged, self.labels)
        self.threshold = None if threshold is None else float(threshold)
        self._init_model(model, tokenizer, device=device, dtype=dtype,
                         max_batch_size=max_batch_size)
        self._prefix, self._tail = self._special_frame()
        self._flagged_index = torch.as_tensor(self.flagged, device=device)
        self.alphabet = self._ordinary_tokens(alphabet_max_chars)

    _auto_model = "AutoModelForSequenceClassification"

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs) -> HFSequenceGuard:
        """Load model and tokenizer through the Auto classes (a hub name or a local path);
        ``device``, ``dtype``, ``load_in_4bit`` and the constructor's options as keywords."""
        return cls._load_text_guard(name_or_path, **kwargs)

    def _special_frame(self, probe: str = "hello world") -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after a text (``[CLS]``, ``[SEP]``)."""
        plain = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(probe)["input_ids"]
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return [int(t) for t in full[:start]], [int(t) for t in full[start + len(plain):]]
        raise ValueError("the tokenizer changes a text's tokens when it adds its special tokens; "
                         "the user text's positions cannot be told apart")

    def describe(self) -> dict:
        """What a certificate records: task, alphabet, flagged labels and rule, precision."""
        return {**self._describe_common(),
                "flagged": [self.labels[i] for i in self.flagged],
                "rule": "argmax" if self.threshold is None else "flagged_mass",
                "threshold": self.threshold}

    def __call__(self, tokens, continuous=None):
        return self._text_only_call(tokens, continuous)

    def _decide(self, input_ids):
        import torch

        logits = self.model(input_ids=input_ids,
                            attention_mask=torch.ones_like(input_ids)).logits.float()
        if self.threshold is None:
            flagged = torch.isin(logits.argmax(dim=-1), self._flagged_index)
        else:
            mass = torch.softmax(logits, dim=-1)[:, self._flagged_index].sum(dim=-1)
            flagged = mass >= self.threshold
        return _fail_closed(flagged.long(), logits.sum(dim=-1))


def _label_names(model_config) -> list[str]:
    id2label = getattr(model_config, "id2label", None) or {}
    count = int(getattr(model_config, "num_labels", len(id2label)) or len(id2label))
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(count)]


def resolve_flagged(flagged, labels: list[str]) -> list[int]:
    """The sorted indices of the flagged labels, given by index or name (see
    :class:`HFSequenceGuard`); a ValueError lists the labels for an unknown one."""
    if len(labels) < 2:
        raise ValueError(f"a sequence classifier needs at least 2 labels, got {labels}")
    if flagged is None:
        return list(range(1, len(labels)))
    items = [x.strip() for x in flagged.split(",")] if isinstance(flagged, str) else list(flagged)
    named = {name.lower(): i for i, name in enumerate(labels)}
    out = set()
    for item in items:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            index = int(item)
        elif isinstance(item, str) and item.strip().isdigit():
            index = int(item)
        elif isinstance(item, str) and item.strip().lower() in named:
            index = named[item.strip().lower()]
        else:
            index = None
        if index is None or not 0 <= index < len(labels):
            raise ValueError(f"flagged label {item!r} is not one of the model's labels: "
                             + ", ".join(f"{i}={name}" for i, name in enumerate(labels)))
        out.add(index)
    if not out or len(out) == len(labels):
        raise ValueError(f"flagged must name at least one and not every label of {labels}, "
                         f"got {flagged!r}")
    return sorted(out)


def guard_task(model_config) -> str:
    """The kind of guard a ``transformers`` model config describes: the one place it is decided.

    A config with a vision tower (``vision_config``) is an image-text-to-text
    guard; else its ``architectures`` decide: ``*ForSequenceClassification``
    is text-classification, ``*ForCausalLM`` text-generation.
    """
    if getattr(model_config, "vision_config", None) is not None:
        return "image-text-to-text"
    architectures = list(getattr(model_config, "architectures", None) or [])
    for ending, task in (("ForSequenceClassification", "text-classification"),
                         ("ForCausalLM", "text-generation")):
        if any(a.endswith(ending) for a in architectures):
            return task
    raise ValueError(f"cannot tell the kind of guard from the model's config (architectures "
                     f"{architectures}, no vision tower); give the task: one of "
                     f"{', '.join(GUARD_TASKS)}")


def load_guard(name_or_path: str | os.PathLike, *, task: str = "auto",
               policy: str | None = None, rule: str = "logit_mass", flagged=None,
               device: str = "cpu", dtype=None, max_batch_size: int | str | None = None,
               load_in_4bit: bool = False):
    """The guard at ``name_or_path``, of the class its task calls for.

    ``task="auto"`` reads the model's config (:func:`guard_task`). ``policy``
    and ``rule`` apply to chat guards (a VLM guard without a policy gets
    :data:`DEFAULT_POLICY`); ``flagged`` applies to a text-classification guard.
    """
    if task not in ("auto", *GUARD_TASKS):
        raise ValueError(f"task must be one of auto, {', '.join(GUARD_TASKS)}, got {task!r}")
    if task == "auto":
        from transformers import AutoConfig

        task = guard_task(AutoConfig.from_pretrained(name_or_path))
    common = {"device": device, "dtype": dtype, "max_batch_size": max_batch_size,
              "load_in_4bit": load_in_4bit}
    if task == "text-classification":
        if policy is not None:
            raise ValueError("policy applies to chat guards, not to a text-classification guard")
        return HFSequenceGuard.from_pretrained(name_or_path, flagged=flagged, **common)
    if flagged is not None:
        raise ValueError(f"flagged labels apply to a text-classification guard, not to a "
                         f"{task} guard")
    if task == "text-generation":
        return HFTextGuard.from_pretrained(name_or_path, policy=policy, rule=rule, **common)
    return HFSafetyGuard.from_pretrained(name_or_path, policy=policy or DEFAULT_POLICY,
                                         rule=rule, **common)
