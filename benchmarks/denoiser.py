"""Time per sample of the diffusion denoiser (one-shot denoised smoothing), random weights.

    python benchmarks/denoiser.py          # CPU: the tests' tiny UNet2DModel
    python benchmarks/denoiser.py --gpu    # CUDA: the 256x256 guided-diffusion-like architecture

Each row denoises one engine batch of noisy images, already on the device, with
:class:`~hybridcert.denoisers.DiffusionDenoiser` and reports milliseconds per
sample for the whole denoiser call and for the UNet's forward pass alone
(timed by hooks, synchronised on CUDA), so the difference is the denoiser's
own cost: scaling, layout, resizes, chunking. ``input`` is the guard-side
resolution; where it differs from the model's, the batch is resized before
and after (bilinear). Models are built from configs; nothing is downloaded.

- CPU: the tests' tiny UNet (16x16, widths 8 and 16), fed 16x16 and 24x24
  images.
- ``--gpu``: an ADM-like ``UNet2DModel`` (Dhariwal and Nichol's 256x256
  unconditional model: widths 256..1024 over 6 levels, 2 residual blocks per
  level, attention at 32, 16 and 8 px with 64-channel heads, scale-shift
  norm, 6 output channels) in float16 and bfloat16, fed 256x256 and 336x336
  (LLaVA's resolution) images, with the peak device memory.
"""

from __future__ import annotations

import argparse
import time

import torch

from hybridcert.denoisers import DiffusionDenoiser

HEADER = (f"{'model':>6} {'dtype':>9} {'input':>5} {'batch':>5} {'chunk':>5} "
          f"{'ms/sample':>10} {'unet ms/sample':>14} {'outside':>8} {'peak GiB':>8}")


def tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))


def adm_unet(device="cuda", dtype=torch.float16):
    """guided-diffusion's 256x256 unconditional architecture as a diffusers UNet2DModel."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    with torch.device(device):
        model = UNet2DModel(
            sample_size=256, in_channels=3, out_channels=6, layers_per_block=2,
            block_out_channels=(256, 256, 512, 512, 1024, 1024), attention_head_dim=64,
            down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                              "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D",
                            "UpBlock2D", "UpBlock2D"),
            resnet_time_scale_shift="scale_shift", norm_num_groups=32)
    return model if dtype == torch.float32 else model.to(dtype)


def measure(denoiser, unet, input_size, batch, device, repeats):
    """(ms per sample of the denoiser call, ms per sample inside the UNet, peak GiB)."""
    cuda = device.type == "cuda"
    inside = [0.0]

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def before(*_):
        sync()
        inside.append(time.perf_counter())

    def after(*_):
        sync()
        inside[0] += time.perf_counter() - inside.pop()

    hooks = [unet.register_forward_pre_hook(before), unet.register_forward_hook(after)]
    noisy = torch.rand((batch, input_size, input_size, 3), generator=torch.Generator(
        device=device).manual_seed(0), device=device)
    denoiser(noisy)  # warm-up (kernels, allocator)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    inside[0] = 0.0
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        denoiser(noisy)
    sync()
    total = time.perf_counter() - start
    for hook in hooks:
        hook.remove()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
    samples = repeats * batch
    return 1e3 * total / samples, 1e3 * inside[0] / samples, peak


def main(argv=None) -> None:
    from diffusers import DDPMScheduler

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true",
                        help="the 256x256 ADM-like architecture on CUDA (random weights)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sigma", type=float, default=0.5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    if args.gpu:
        if not torch.cuda.is_available():
            parser.error("--gpu needs CUDA")
        device = torch.device("cuda")
        configs = [(dtype, size, batch, chunk)
                   for dtype in (torch.float16, torch.bfloat16)
                   for size in (256, 336)
                   for batch, chunk in ((32, 32), (128, 64), (256, 128))]
        repeats = args.repeats or 3
    else:
        device = torch.device("cpu")
        configs = [(torch.float32, size, batch, chunk) for size in (16, 24)
                   for batch, chunk in ((1, 1), (64, 32), (256, 256))]
        repeats = args.repeats or 5
    print(f"denoiser benchmark: {device}, sigma {args.sigma}, {repeats} repeats, "
          f"{torch.get_num_threads()} CPU threads")
    print(HEADER)
    print("-" * len(HEADER))
    unets = {}
    for dtype, size, batch, chunk in configs:
        if dtype not in unets:
            unets[dtype] = adm_unet(device, dtype).eval() if args.gpu else tiny_unet().eval()
        unet = unets[dtype]
        denoiser = DiffusionDenoiser(unet, scheduler, sigma=args.sigma, batch_size=chunk,
                                     device=device)
        total, inside, peak = measure(denoiser, unet, size, batch, device, repeats)
        params = sum(p.numel() for p in unet.parameters())
        label = "adm" if args.gpu else "tiny"
        print(f"{label:>6} {str(dtype).removeprefix('torch.'):>9} {size:>5} {batch:>5} "
              f"{chunk:>5} {total:>10.3f} {inside:>14.3f} {1 - inside / total:>8.1%} "
              f"{f'{peak:.2f}' if args.gpu else '-':>8}", flush=True)
    print(f"\n{label} UNet: {params / 1e6:.2f}M parameters; model resolution "
          f"{unet.config.sample_size}; timestep {denoiser.timestep} "
          f"(noise level {denoiser.noise_level:.4f} vs 2 sigma = {2 * args.sigma})")
    if not args.gpu:
        with torch.device("meta"):
            adm = adm_unet("meta", torch.float32)
        n = sum(p.numel() for p in adm.parameters())
        print(f"the --gpu architecture (built on the meta device): {n / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
