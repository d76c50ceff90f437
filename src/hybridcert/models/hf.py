"""Hugging Face vision-language safety guards (LLaVA-Guard and other chat VLMs) as base classifiers.

The guard reads a policy, the user's text and an image, and answers "Safe"
or "Unsafe". :class:`HFSafetyGuard` makes any ``AutoModelForImageTextToText``
plus ``AutoProcessor`` pair a base classifier for the smoothing engine:

- The prompt is built once with the processor's chat template: one image
  slot, then a text block holding the policy and the user text. It is
  rendered with a sentinel where the user text goes. The part before the
  sentinel is tokenized by the processor itself, so the image slot is
  expanded exactly as the model expects; the noisy user-token ids are spliced
  in between. The policy is never noised or attacked.
- Text noise acts on the token ids of the user text only, drawn from an
  alphabet of ordinary tokens: not special, printable, at most
  ``alphabet_max_chars`` characters. The alphabet is part of the certificate,
  because the atoms depend on its size (see :attr:`alphabet`).
- Images: the continuous input is an RGB image ``(H, W, 3)`` in ``[0, 1]``,
  resized once, on load, to the processor's resolution (:meth:`load_image`).
  That is the pixel space in which the engine draws the Gaussian noise, so
  ``sigma`` and the certified L2 radius are measured there (recorded as
  ``pixel_space`` by :meth:`describe`). The noisy image is clipped to
  ``[0, 1]`` (post-processing, part of the base classifier).
- Two image paths. The *device* path serves processors whose pipeline, on an
  image already at their resolution, is a fixed affine map per channel
  (CLIP-style LLaVA and LlavaGuard, SigLIP: resize and center-crop are then
  identities; rescale and normalise remain). :meth:`prepare_continuous` puts
  the clean image on the model's device once per example, the engine draws
  the noise there with a seeded torch generator, and ``pixel_values`` are
  computed with torch ops: no CPU round trip per sample. Any other processor
  (OneVision's any-resolution tiling, for instance) keeps the *processor*
  path: the noisy batch goes through the processor on the CPU (``do_rescale=
  False``), as before; this is said once in the log.
- Precision and batch size: the model runs in ``dtype``; the logit-mass rule
  re-applies the output head in float32. Forward passes run in micro-batches
  of at most ``max_batch_size``; with ``"auto"`` the micro-batch is halved
  after an out-of-memory error and the size it settles on is recorded. The
  halving happens here, inside one engine batch, so the engine's noise draws
  (and with them the certificate) do not depend on it.
- Decision rules: ``"logit_mass"`` takes one forward pass and compares the
  total next-token probability of the Unsafe variants with that of the Safe
  variants (the softmax normaliser is common to both, so only the answer
  tokens' logits are needed: their log-sum-exps are compared).
  ``"generate"`` greedy-decodes a few tokens and parses them; an answer that
  is neither is ``ABSTAIN`` (-1), which the engine counts against the
  certified label.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os

import numpy as np

from .._validation import check_int
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


class HFSafetyGuard:
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
        variant (with and without a leading space) forms the two token sets.
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

    def __init__(self, model, processor, *, policy: str = DEFAULT_POLICY,
                 rule: str = "logit_mass", safe_words=("Safe", "safe", "SAFE"),
                 unsafe_words=("Unsafe", "unsafe", "UNSAFE"), max_new_tokens: int = 4,
                 alphabet_max_chars: int = 8, device: str = "cpu", dtype=None,
                 image_path: str = "auto", max_batch_size: int | str | None = None):
        import torch

        if rule not in ("logit_mass", "generate"):
            raise ValueError("rule must be 'logit_mass' or 'generate'")
        if not policy.strip():
            raise ValueError("policy must not be empty")
        if image_path not in IMAGE_PATHS:
            raise ValueError(f"image_path must be one of {IMAGE_PATHS}, got {image_path!r}")
        if max_batch_size is not None and max_batch_size != "auto" and (
                isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int)
                or max_batch_size < 1):
            raise ValueError(f"max_batch_size must be None, 'auto' or an integer >= 1, got "
                             f"{max_batch_size!r}")
        for name, words in (("safe_words", safe_words), ("unsafe_words", unsafe_words)):
            if isinstance(words, (str, bytes)) or not words or \
                    not all(isinstance(w, str) and w for w in words):
                raise ValueError(f"{name} must be a non-empty sequence of non-empty strings, "
                                 f"got {words!r}")
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
        alphabet_max_chars = check_int("alphabet_max_chars", alphabet_max_chars, minimum=1)
        dtype = resolve_dtype(dtype, device)
        if getattr(model, "hf_quantizer", None) is None:  # quantised weights are placed at load
            model = model.to(device) if dtype is None else model.to(device, dtype)
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.rule = rule
        self.policy = policy
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.max_batch_size = max_batch_size
        self._micro = max_batch_size if isinstance(max_batch_size, int) else None
        self._largest_ok = 0
        self.safe_words, self.unsafe_words = tuple(safe_words), tuple(unsafe_words)
        self._prefix, self._suffix = self._render_prompt(policy)
        safe, unsafe = self._first_tokens(self.safe_words), self._first_tokens(self.unsafe_words)
        # A first token shared by a Safe and an Unsafe variant says nothing: leave it out.
        self.safe_ids, self.unsafe_ids = sorted(safe - unsafe), sorted(unsafe - safe)
        if not self.safe_ids or not self.unsafe_ids:
            raise ValueError("no first token tells the Safe answers from the Unsafe ones; pass "
                             "other safe_words / unsafe_words")
        self.alphabet = self._ordinary_tokens(alphabet_max_chars)
        self._safe_index = torch.as_tensor(self.safe_ids, device=device)
        self._unsafe_index = torch.as_tensor(self.unsafe_ids, device=device)
        self.native_size = self._native_size()
        self._affine = None  # per-channel (scale, shift) of the device path
        self.image_path = self._choose_image_path(image_path)
        self._warned_size = False
        params = inspect.signature(self.model.forward).parameters
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._head32 = None
        self._float_head = False
        if rule == "logit_mass":
            self._install_float32_head()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, device: str = "cpu",
                        dtype=None, load_in_4bit: bool = False, **kwargs) -> HFSafetyGuard:
        """Load model and processor through the Auto classes (a hub name or a local path).

        ``load_in_4bit`` quantises with bitsandbytes when it is installed (GPU).
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype = resolve_dtype(dtype, device)
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
        processor = AutoProcessor.from_pretrained(name_or_path)
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, **options)
        return cls(model, processor, device=device, dtype=None if load_in_4bit else dtype,
                   **kwargs)

    # ------------------------------------------------------------------ text and images

    def encode_text(self, text: str) -> np.ndarray:
        """Token ids of the user text: the discrete part the noise acts on."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the user text must be a non-empty string")
        return np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)

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

    def prompt_ids(self, user_ids) -> list[int]:
        """The full prompt for one noisy user-id sequence: prefix + user ids + suffix."""
        return [*self._prefix, *(int(t) for t in user_ids), *self._suffix]

    @property
    def forward_batch_size(self) -> int | None:
        """The forward micro-batch in use: the largest that ran since the last halving,
        capped by ``max_batch_size`` (under ``"auto"``, the size it settled on);
        ``None`` before any forward pass without a fixed size."""
        sizes = [s for s in (self._micro, self._largest_ok) if s]
        return min(sizes) if sizes else None

    def describe(self) -> dict:
        """What a certificate records about this guard: the alphabet (it decides the atoms),
        the pixel space of the noise (the space of the L2 radius), precision and batching."""
        import torch

        size = "x".join(map(str, self.native_size)) if self.native_size else "the input's"
        return {"rule": self.rule, "alphabet_size": int(self.alphabet.size),
                "alphabet_sha1": hashlib.sha1(self.alphabet.tobytes()).hexdigest()[:12],
                "model": type(self.model).__name__, "policy_sha1":
                    hashlib.sha1(self.policy.encode()).hexdigest()[:12],
                "pixel_space": "RGB (H, W, 3) in [0, 1], the image as the engine receives "
                               f"it: resized once, on load, to {size} (the processor's "
                               "resolution) by load_image and the CLI; sigma and the L2 "
                               "radius are in this space",
                "image_path": self.image_path,
                "dtype": str(getattr(self.model, "dtype", torch.float32)).removeprefix("torch."),
                "max_batch_size": self.max_batch_size,
                "forward_batch_size": self.forward_batch_size}

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

    def _first_tokens(self, words) -> set[int]:
        """First token of each answer variant, with and without a leading space."""
        ids = set()
        for word in words:
            for variant in (word, " " + word):
                encoded = self.tokenizer(variant, add_special_tokens=False)["input_ids"]
                if encoded and self.tokenizer.decode(encoded[:1]).strip():
                    ids.add(int(encoded[0]))
        return ids

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
        # One length per engine batch (the threat region fixes it), so no padding is needed.
        parts = [np.asarray(part, np.int64) for part in (self._prefix, ids, self._suffix)]
        prompts = np.concatenate([np.broadcast_to(p, (len(ids), p.shape[-1])) for p in parts],
                                 axis=1)
        input_ids = torch.as_tensor(prompts, device=self.device)
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
        import torch

        if self.rule == "logit_mass":
            # No padding (one length per batch), so no attention mask: plain causal attention.
            self._float_head = True
            try:
                logits = self.model(input_ids=input_ids, pixel_values=pixel_values,
                                    use_cache=False, **self._keep_last).logits[:, -1, :].float()
            finally:
                self._float_head = False
            # Safe vs Unsafe next-token mass: the softmax normaliser is common to both sides.
            unsafe = torch.logsumexp(logits[:, self._unsafe_index], dim=-1)
            safe = torch.logsumexp(logits[:, self._safe_index], dim=-1)
            return (unsafe > safe).long()
        out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                  pixel_values=pixel_values, do_sample=False,
                                  max_new_tokens=self.max_new_tokens,
                                  pad_token_id=self.tokenizer.pad_token_id)
        answers = self.tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
        return torch.as_tensor([self.parse(a) for a in answers], dtype=torch.long)

    def _in_micro_batches(self, decide, input_ids, pixel_values):
        """``decide`` over micro-batches of at most the current size; under ``"auto"`` an
        out-of-memory error halves the size and the same micro-batch is retried."""
        import torch

        size, start, out = len(input_ids), 0, []
        while start < size:
            step = min(self._micro or size, size - start)
            try:
                out.append(decide(input_ids[start:start + step], pixel_values[start:start + step]))
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
                logger.info("HFSafetyGuard: out of memory at a forward batch of %d; halving "
                            "to %d", step, self._micro)
        return torch.cat(out) if len(out) > 1 else out[0]

    def parse(self, answer: str) -> int:
        """1 for an answer starting with an Unsafe word, 0 for a Safe one, else ``ABSTAIN``.

        Unsafe words are tried first ("Unsafe" does not start with "Safe", but a user's
        variants might overlap).
        """
        text = answer.strip().lstrip("\"'*")
        if any(text.startswith(w) for w in self.unsafe_words):
            return 1
        if any(text.startswith(w) for w in self.safe_words):
            return 0
        return ABSTAIN
