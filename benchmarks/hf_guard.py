"""Throughput of a Hugging Face safety guard under smoothing: device image path vs processor path.

    python benchmarks/hf_guard.py

Certifies one text + image example through :class:`~hybridcert.smoothing.SmoothedClassifier`
with an :class:`~hybridcert.models.hf.HFSafetyGuard`, once with each image path:

- ``processor``: the noise is drawn on the CPU (numpy) and every noisy image
  goes through the processor's PIL pipeline before ``pixel_values`` reach the
  device (the path every guard took before issue 16);
- ``device``: the clean image is put on the device once, the noise is drawn
  there and ``pixel_values`` come from torch ops (the processor's own mean,
  std and rescale factor).

For every batch size it reports noisy samples per second, the share of wall
time spent outside the model's forward pass (timed by hooks on the model,
synchronised on CUDA), that time per sample, and the peak device memory.
``auto`` is ``--batch-size auto``: noise drawn 1024 at a time, the forward
micro-batch halved after out-of-memory errors, and the size it settled on
(its row certifies at least 1024 samples, one full engine batch, after a
warm-up run that does the search).

Models are built from configs with random weights; nothing is downloaded.

- On a CPU-only machine: the tiny LLaVA of the tests (both paths side by
  side; target: at least 5x less time per sample outside the forward pass on
  the device path). The real-size shapes are checked on the meta device
  (parameter counts, image tokens), without weights or a forward pass.
- On CUDA: the real-size shapes in bfloat16, initialised on the GPU (target:
  at most 10% of the time outside the forward pass for the 7B shape).
  ``7b``: LLaVA-1.5-7B (CLIP ViT-L/14 at 336 px, 576 image tokens; Llama-2-7B).
  ``0.5b``: the towers of LlavaGuard-v1.2-0.5B-OV (SigLIP-so400m/14 at 384 px,
  729 image tokens; Qwen2-0.5B) in a LLaVA wrapper with a square SigLIP
  processor. The OneVision processor itself tiles any-resolution images (and
  needs torchvision), so such a guard takes the processor path.

The tokenizer is the tests' small BPE; the policy is repeated up to
``--policy-tokens`` tokens so that the prompt has a realistic length.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hf_tiny import build_tiny_llava
from hybridcert.config import AUTO_BATCH
from hybridcert.models.hf import HFSafetyGuard
from hybridcert.noise import UniformSubstitution
from hybridcert.smoothing import SmoothedClassifier

POLICY_SENTENCE = "policy: flag violent or illegal content. "
USER_TEXT = "how do i mix the powder with acid"


def real_shapes() -> dict:
    """The real-size architectures, written out (vision tower, language model, image tokens)."""
    from transformers import CLIPVisionConfig, LlamaConfig, Qwen2Config, SiglipVisionConfig

    return {
        "7b": {  # LLaVA-1.5-7B (and LlavaGuard-7B): CLIP ViT-L/14-336 + Llama-2-7B
            "vision": CLIPVisionConfig(hidden_size=1024, intermediate_size=4096,
                                       num_hidden_layers=24, num_attention_heads=16,
                                       image_size=336, patch_size=14, projection_dim=768,
                                       hidden_act="quick_gelu"),
            "text": LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                                num_hidden_layers=32, num_attention_heads=32,
                                num_key_value_heads=32, max_position_embeddings=4096,
                                rms_norm_eps=1e-5),
            "processor": "clip", "image_size": 336, "patch_size": 14,
            "strategy": "default", "feature_layer": -2, "extra_tokens": 1,
        },
        "0.5b": {  # LlavaGuard-v1.2-0.5B-OV's towers: SigLIP-so400m/14-384 + Qwen2-0.5B
            "vision": SiglipVisionConfig(hidden_size=1152, intermediate_size=4304,
                                         num_hidden_layers=27, num_attention_heads=16,
                                         image_size=384, patch_size=14),
            "text": Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                num_hidden_layers=24, num_attention_heads=14,
                                num_key_value_heads=2, max_position_embeddings=32768,
                                tie_word_embeddings=True, rms_norm_eps=1e-6),
            "processor": "siglip", "image_size": 384, "patch_size": 14,
            "strategy": "full", "feature_layer": -1, "extra_tokens": 0,
        },
    }


def build_real(shape: dict, tokenizer_dir: Path, device: str, dtype):
    """A LLaVA of ``shape`` with random weights (on ``device``, or the meta device) and its
    processor (the tests' tokenizer, a CLIP or SigLIP image processor at the right size)."""
    from transformers import AutoProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tokenizer = AutoProcessor.from_pretrained(tokenizer_dir).tokenizer
    size = shape["image_size"]
    if shape["processor"] == "clip":
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": size},
                                                crop_size={"height": size, "width": size})
    else:
        image_processor = SiglipImageProcessorPil(size={"height": size, "width": size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=shape["patch_size"],
                               vision_feature_select_strategy=shape["strategy"],
                               chat_template=AutoProcessor.from_pretrained(
                                   tokenizer_dir).chat_template,
                               num_additional_image_tokens=shape["extra_tokens"])
    patches = (size // shape["patch_size"]) ** 2
    image_tokens = patches + shape["extra_tokens"] - (shape["strategy"] == "default")
    config = LlavaConfig(vision_config=shape["vision"], text_config=shape["text"],
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=shape["feature_layer"],
                         vision_feature_select_strategy=shape["strategy"],
                         image_seq_length=image_tokens)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return model, processor, image_tokens


def policy_text(tokenizer, tokens: int) -> str:
    """The policy sentence repeated until it is about ``tokens`` tokens long."""
    once = len(tokenizer(POLICY_SENTENCE, add_special_tokens=False)["input_ids"])
    return (POLICY_SENTENCE * max(1, round(tokens / once))).strip()


class ForwardClock:
    """Wall time inside the model's forward pass, from hooks (synchronised on CUDA)."""

    def __init__(self, model, device: str):
        self.seconds, self._start = 0.0, None
        self._sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
        model.register_forward_pre_hook(self._enter)
        model.register_forward_hook(self._leave)

    def _enter(self, module, args):
        self._sync()
        self._start = time.perf_counter()

    def _leave(self, module, args, out):
        self._sync()
        self.seconds += time.perf_counter() - self._start


def smoother(guard: HFSafetyGuard, batch) -> SmoothedClassifier:
    return SmoothedClassifier(guard, sigma=0.5, clamp=(0.0, 1.0), decision="threshold",
                              tau=0.01, batch_size=AUTO_BATCH if batch == "auto" else batch,
                              random_state=0,
                              discrete_noise=UniformSubstitution(0.25, alphabet=guard.alphabet))


def timed_certify(smooth: SmoothedClassifier, clock: ForwardClock, tokens, image, n: int,
                  cuda: bool) -> tuple[float, float]:
    """(wall seconds, seconds inside the forward pass) of one certification with ``n`` samples."""
    if cuda:
        torch.cuda.synchronize()
    clock.seconds = 0.0
    start = time.perf_counter()
    smooth.certify(tokens, image, n=n, d_max=1)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, clock.seconds


def measure(rows: dict, clock: ForwardClock, image: np.ndarray, n: int, device: str,
            repeats: int) -> dict:
    """Time the rows' guards in turn, ``repeats`` rounds (interleaved, so that a disturbance
    by other processes hits every row alike); each component's fastest round is reported."""
    cuda = str(device).startswith("cuda")
    smooths = {key: smoother(guard, key[1]) for key, guard in rows.items()}
    samples = {key: max(n, AUTO_BATCH) if key[1] == "auto" else n for key in rows}
    peaks, timings = {}, {key: [] for key in rows}
    tokens = next(iter(rows.values())).encode_text(USER_TEXT)
    for key, smooth in smooths.items():
        # Warm-up, and under auto the forward size search; then the peak memory of one run.
        smooth.certify(tokens, image, n=min(samples[key], smooth.batch_size), d_max=1)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        timings[key].append(timed_certify(smooth, clock, tokens, image, samples[key], cuda))
        peaks[key] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    for _ in range(repeats - 1):
        for key, smooth in smooths.items():
            timings[key].append(timed_certify(smooth, clock, tokens, image, samples[key], cuda))
    out = {}
    for key, times in timings.items():
        m = samples[key]
        wall = min(w for w, _ in times)
        outside = min(w - f for w, f in times)
        forward = min(f for _, f in times)
        out[key] = {"samples": m, "per_s": m / wall, "outside_share": outside / (outside + forward),
                    "outside_ms": 1e3 * outside / m, "forward_ms": 1e3 * forward / m,
                    "peak_gib": peaks[key], "forward_batch": rows[key].forward_batch_size}
    return out


def run_shape(name, model, processor, device, dtype, batches, n, policy_tokens,
              repeats) -> list[dict]:
    """Both image paths at every batch size (``auto``: the device path only)."""
    policy = policy_text(processor.tokenizer, policy_tokens)
    clock = ForwardClock(model, device)
    guards = {(path, auto): HFSafetyGuard(model, processor, policy=policy, device=device,
                                          dtype=dtype, image_path=path,
                                          max_batch_size="auto" if auto else None)
              for path, auto in (("processor", False), ("device", False), ("device", True))}
    some = guards["device", False]
    prompt = len(some.prompt_ids(some.encode_text(USER_TEXT)))
    image = np.random.default_rng(0).random((*some.native_size, 3), dtype=np.float32)
    rows = []
    for batch in batches:
        paths = ("processor", "device") if batch != "auto" else ("device",)
        keys = {(path, batch): guards[path, batch == "auto"] for path in paths}
        for (path, _), result in measure(keys, clock, image, n, device, repeats).items():
            rows.append({"shape": name, "dtype": str(model.dtype).removeprefix("torch."),
                         "prompt": prompt, "path": path, "batch": batch, **result})
            print_row(rows[-1])
    return rows


HEADER = (f"{'shape':>6} {'dtype':>8} {'prompt':>6} {'path':>9} {'batch':>5} {'samples':>7} "
          f"{'samples/s':>10} {'outside fwd':>11} {'outside ms/sample':>17} "
          f"{'fwd ms/sample':>13} {'peak GiB':>8} {'fwd batch':>9}")


def print_row(r: dict) -> None:
    peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
    print(f"{r['shape']:>6} {r['dtype']:>8} {r['prompt']:>6} {r['path']:>9} {r['batch']!s:>5} "
          f"{r['samples']:>7} {r['per_s']:>10.1f} {r['outside_share']:>10.1%} "
          f"{r['outside_ms']:>17.3f} {r['forward_ms']:>13.3f} {peak:>8} "
          f"{r['forward_batch']!s:>9}", flush=True)


def ratios(rows: list[dict]) -> None:
    """Outside-forward time per sample, processor path over device path, per shape and batch."""
    for r in rows:
        if r["path"] != "device" or r["batch"] == "auto":
            continue
        old = next(o for o in rows if o["shape"] == r["shape"] and o["batch"] == r["batch"]
                   and o["path"] == "processor")
        print(f"{r['shape']} batch {r['batch']}: outside-forward time per sample "
              f"{old['outside_ms']:.3f} ms -> {r['outside_ms']:.3f} ms "
              f"({old['outside_ms'] / r['outside_ms']:.1f}x less on the device path); "
              f"throughput {r['per_s'] / old['per_s']:.2f}x")


def meta_check(tokenizer_dir: Path) -> None:
    """Real-size shapes on the meta device: parameters and image tokens, no weights."""
    for name, shape in real_shapes().items():
        model, _, image_tokens = build_real(shape, tokenizer_dir, "meta", torch.bfloat16)
        params = sum(p.numel() for p in model.parameters()) / 1e9
        print(f"shape {name}: {params:.2f}B parameters, {image_tokens} image tokens "
              f"(meta device: built, not run)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=None, choices=("tiny", "0.5b", "7b"),
                        help="default: tiny on CPU, 0.5b and 7b on CUDA")
    parser.add_argument("--batch-sizes", nargs="+", default=None,
                        help="integers and/or 'auto' (default: 64 256 auto on CPU, 16 64 auto on CUDA)")
    parser.add_argument("--n", type=int, default=None,
                        help="noisy samples per row (default 2048 on CPU, 256 on CUDA)")
    parser.add_argument("--policy-tokens", type=int, default=None,
                        help="policy length in tokens (default 40 for tiny, 400 otherwise)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (1: small ops on a shared CPU pay more for "
                             "waking threads than they gain)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per row, interleaved between the rows of a batch "
                             "size; each component's fastest is reported (5 on CPU, 1 on CUDA)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    shapes = args.shapes or (["0.5b", "7b"] if cuda else ["tiny"])
    batches = [b if b == "auto" else int(b) for b in
               (args.batch_sizes or (["16", "64", "auto"] if cuda else ["64", "256", "auto"]))]
    n = args.n or (256 if cuda else 2048)
    args.repeats = args.repeats or (1 if cuda else 5)
    dtype = torch.bfloat16 if cuda else torch.float32
    print(f"hf guard benchmark: device {args.device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if cuda else ''}, torch "
          f"{torch.__version__}, {args.threads} CPU threads, {n} noisy samples a row, fastest of "
          f"{args.repeats} interleaved rounds\n")
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_llava(Path(tmp) / "tiny")
        print(HEADER)
        print("-" * len(HEADER))
        rows = []
        for name in shapes:
            if name == "tiny":
                from transformers import AutoModelForImageTextToText, AutoProcessor

                model = AutoModelForImageTextToText.from_pretrained(tiny)
                processor = AutoProcessor.from_pretrained(tiny)
            else:
                if not cuda:
                    print(f"shape {name}: random real-size weights are only initialised on a "
                          "GPU; see the meta-device check below")
                    continue
                model, processor, _ = build_real(real_shapes()[name], tiny, args.device, dtype)
            rows += run_shape(name, model, processor, args.device, dtype, batches, n,
                              args.policy_tokens or (40 if name == "tiny" else 400), args.repeats)
            del model
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
        print()
        ratios(rows)
        if not cuda:
            print()
            meta_check(tiny)


if __name__ == "__main__":
    main()
