"""Denoisers for the engine's post-processing slot: one-shot diffusion denoising (denoised smoothing).

Carlini et al. (2023, "(Certified!!) Adversarial Robustness for Free!") smooth
a classifier that sees ``denoise(x + sigma * eps)``: an off-the-shelf diffusion
model removes the Gaussian noise in one step, then the classifier runs.
:class:`DiffusionDenoiser` is that denoiser for
:class:`~hybridcert.noise.GaussianNoise` (``SmoothedClassifier(...,
denoiser=...)``).

Where it sits, and why the certificate stays sound
--------------------------------------------------
The engine draws the noise itself, ``sigma * N(0, I)``, in the input's own
pixel scale (images in ``[0, 1]``), then clamps, then calls the denoiser on
each model batch. The denoiser only post-processes the noisy sample: it is
part of the base classifier, so every certificate holds whatever it does.
Its timestep decides accuracy only. The denoiser adds no noise of its own.

The scale map (pixels ``x`` in ``[0, 1]`` with noise ``sigma``):

1. ``2 x - 1`` in the diffusion model's ``[-1, 1]`` scale: the noise there
   has standard deviation ``2 sigma``;
2. the timestep ``t`` whose ``sqrt((1 - a_t) / a_t)`` is nearest to
   ``2 sigma`` (``a_t``: the schedule's ``alphas_cumprod``), see
   :func:`diffusion_timestep`;
3. ``x_t = sqrt(a_t) (2 x - 1)``: a sample of the forward process at ``t``
   (``sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` with ``2 sigma = sqrt((1 - a_t) /
   a_t)``);
4. ``x_0 = (x_t - sqrt(1 - a_t) eps_theta(x_t, t)) / sqrt(a_t)`` from the
   epsilon-prediction;
5. back to ``[0, 1]`` with ``(x_0 + 1) / 2``, clamped to ``[0, 1]``.

**The scale pitfall.** The noise in ``[-1, 1]`` pixels is *twice* the noise
in ``[0, 1]`` pixels. Code that picks the timestep for ``sigma`` instead of
``2 sigma`` in the ``[-1, 1]`` scale (as the hybrid-smoothing paper's
published code does, letting the denoiser add that noise itself) smooths with
noise ``sigma / 2`` in ``[0, 1]`` pixels while certifying radii for
``sigma``: those radii are about twice what the noise supports. Carlini et
al.'s own code doubles sigma (``target_sigma = sigma * 2``). Here the noise is
always the engine's, of standard deviation ``sigma`` in the input's pixel
scale; the model behind the denoiser sees it scaled by ``2 sqrt(a_t)``.

Resolution. A guard and a diffusion model rarely share a resolution (336 or
384 for CLIP-style guards, 256 for guided-diffusion). With ``resolution`` set,
the noisy batch is resized to it before the model and the estimate back to
the input's size after (``torch.nn.functional.interpolate``). Both resizes
come *after* the noise: they are post-processing too. The noise is drawn at
the guard's resolution, in the input's pixel scale, so ``sigma`` and the
certified L2 radius refer to that space (the guard's pixels at its
resolution), not to the denoiser's. Resizing changes the noise the diffusion
model sees (interpolation averages neighbouring pixels, so its standard
deviation falls below ``2 sigma`` when downsampling); the timestep stays that
of ``sigma``, which again is a matter of accuracy only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import numbers
from collections.abc import Mapping

import numpy as np

from ._validation import check_int, check_positive

LAYOUTS = ("channels_last", "channels_first")
INTERPOLATIONS = ("bilinear", "bicubic")
DTYPES = ("float32", "float64", "bfloat16", "float16")
TIMESTEP_RULE = "nearest sqrt((1 - a_t) / a_t) to 2 sigma (the noise in [-1, 1] pixels)"


def noise_levels(alphas_cumprod) -> np.ndarray:
    """The noise-to-signal ratio ``sqrt((1 - a_t) / a_t)`` of each timestep of a schedule.

    In the diffusion model's ``[-1, 1]`` pixel scale, ``x_t / sqrt(a_t)`` is
    the clean image plus Gaussian noise of this standard deviation.
    """
    a = _check_schedule(alphas_cumprod)
    return np.sqrt((1.0 - a) / a)


def diffusion_timestep(sigma: float, alphas_cumprod) -> int:
    """The timestep whose noise matches Gaussian noise ``sigma`` on pixels in ``[0, 1]``.

    Parameters
    ----------
    sigma : float > 0
        Standard deviation of the noise in ``[0, 1]`` pixels (the engine's
        ``sigma``). In the model's ``[-1, 1]`` scale it is ``2 sigma``.
    alphas_cumprod : 1-D array of floats in (0, 1]
        The schedule's cumulative products ``a_t``, decreasing in ``t``.

    Returns
    -------
    int
        ``argmin_t |sqrt((1 - a_t) / a_t) - 2 sigma|`` (the smaller ``t`` on
        a tie).

    Raises
    ------
    ValueError
        If ``2 sigma`` lies outside the schedule's range of noise levels.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))  # DDPM's linear schedule
    >>> t = diffusion_timestep(0.25, a)  # noise 0.5 in [-1, 1] pixels
    >>> t, round(float(np.sqrt((1 - a[t]) / a[t])), 4)
    (144, 0.4994)
    """
    sigma = float(check_positive("sigma", sigma))
    levels = noise_levels(alphas_cumprod)
    target = 2.0 * sigma
    if not levels[0] <= target <= levels[-1]:
        raise ValueError(f"sigma must lie in [{levels[0] / 2:.4g}, {levels[-1] / 2:.4g}] for this "
                         f"schedule (noise levels {levels[0]:.4g}..{levels[-1]:.4g} in [-1, 1] "
                         f"pixels, i.e. 2 sigma), got {sigma}")
    return int(np.argmin(np.abs(levels - target)))


class DiffusionDenoiser:
    """One-shot diffusion denoising of the engine's noisy batches (Carlini et al., 2023).

    A callable ``noisy batch -> denoised batch`` for
    ``SmoothedClassifier(..., denoiser=...)`` /
    :class:`~hybridcert.noise.GaussianNoise`: see the module docstring for
    the scale map, the scale pitfall (``2 sigma`` in ``[-1, 1]`` pixels, not
    ``sigma``) and where the resize sits relative to the noise.

    Parameters
    ----------
    model : torch module or callable
        A diffusers ``UNet2DModel`` (its output's ``.sample`` is used), or any
        epsilon-prediction callable ``eps(x_t, t)`` taking a float batch
        ``(B, C, H, W)`` in the ``[-1, 1]`` scale times ``sqrt(a_t)`` and a
        long tensor ``t`` of shape ``(B,)``. Extra output channels (learned
        variance: guided-diffusion returns ``2 C``) are dropped: the first
        ``C`` are epsilon.
    scheduler : diffusers scheduler, optional
        Gives ``alphas_cumprod`` (for instance ``DDPMScheduler``); its
        ``prediction_type`` must be ``"epsilon"``.
    alphas_cumprod : 1-D array, optional
        The schedule, when there is no scheduler (guided-diffusion's
        ``diffusion.alphas_cumprod``). Give exactly one of the two.
    sigma : float > 0, optional
        The noise's standard deviation in ``[0, 1]`` pixels. Left out, it is
        set by :class:`~hybridcert.noise.GaussianNoise` (and so by
        ``SmoothedClassifier``) from its own ``sigma`` (:meth:`for_sigma`).
    layout : {"channels_last", "channels_first"}
        The engine's batches: ``(B, H, W, C)`` as the Hugging Face guards take
        images (the default), or ``(B, C, H, W)``.
    resolution : int or (int, int), optional
        The model's input size; the batch is resized to it and back (after the
        noise). Default: a ``UNet2DModel``'s ``sample_size``, else no resize.
    interpolation : {"bilinear", "bicubic"}
    batch_size : int >= 1
        Images per model call; a larger engine batch is denoised in chunks.
    device : str or torch.device, optional
        Default: a torch module's device, else the batch's.
    dtype : {"float32", "float64", "bfloat16", "float16"} or torch.dtype, optional
        The model's input dtype. Default: the model's ``dtype`` attribute (a
        diffusers model), else float32 (guided-diffusion's fp16 models take
        float32 input and convert inside).
    name : str, optional
        Recorded by :meth:`describe`; default: a diffusers model's
        ``name_or_path``, else the callable's type name.

    Examples
    --------
    guided-diffusion's 256x256 unconditional checkpoint (Dhariwal and Nichol;
    the model of Carlini et al. and of the hybrid-smoothing paper) outputs 6
    channels, epsilon then the learned variance. Wrap it as::

        from guided_diffusion.script_util import (
            create_model_and_diffusion, model_and_diffusion_defaults)
        cfg = model_and_diffusion_defaults()
        cfg.update(attention_resolutions="32,16,8", class_cond=False, diffusion_steps=1000,
                   image_size=256, learn_sigma=True, noise_schedule="linear",
                   num_channels=256, num_head_channels=64, num_res_blocks=2,
                   resblock_updown=True, use_fp16=True, use_scale_shift_norm=True)
        unet, diffusion = create_model_and_diffusion(**cfg)
        unet.load_state_dict(torch.load("256x256_diffusion_uncond.pt", map_location="cpu"))
        unet.convert_to_fp16()
        unet.eval().to("cuda")
        denoiser = DiffusionDenoiser(lambda x_t, t: unet(x_t, t)[:, :3],
                                     alphas_cumprod=diffusion.alphas_cumprod,
                                     resolution=256, device="cuda",
                                     name="guided-diffusion 256x256_diffusion_uncond")

    A diffusers model: ``DiffusionDenoiser(UNet2DModel.from_pretrained(p),
    DDPMScheduler.from_pretrained(p))``, or :func:`load_denoiser`.
    """

    def __init__(self, model, scheduler=None, *, alphas_cumprod=None, sigma: float | None = None,
                 layout: str = "channels_last", resolution=None, interpolation: str = "bilinear",
                 batch_size: int = 32, device=None, dtype=None, name: str | None = None):
        if not callable(model):
            raise ValueError("model must be a diffusers UNet2DModel or a callable eps(x_t, t)")
        if (scheduler is None) == (alphas_cumprod is None):
            raise ValueError("give exactly one of scheduler (a diffusers scheduler) and "
                             "alphas_cumprod (the schedule of an epsilon-prediction callable)")
        prediction = "epsilon"
        if scheduler is not None:
            prediction = getattr(getattr(scheduler, "config", None), "prediction_type", "epsilon")
            if not hasattr(scheduler, "alphas_cumprod"):
                raise ValueError(f"scheduler must have alphas_cumprod (a diffusers DDPM/DDIM "
                                 f"scheduler), got {type(scheduler).__name__}")
            alphas_cumprod = scheduler.alphas_cumprod
        if prediction != "epsilon":
            raise ValueError(f"the scheduler's prediction_type must be 'epsilon' (the model "
                             f"predicts the noise), got {prediction!r}")
        self.alphas_cumprod = _check_schedule(_to_numpy(alphas_cumprod))
        self.model = model
        self.sigma = None if sigma is None else float(check_positive("sigma", sigma))
        self.timestep = None if sigma is None else diffusion_timestep(self.sigma,
                                                                     self.alphas_cumprod)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.interpolation = interpolation
        config = getattr(model, "config", None)
        if resolution is None:
            resolution = getattr(config, "sample_size", None)
        self.resolution = None if resolution is None else _check_resolution(resolution)
        self.in_channels = getattr(config, "in_channels", None)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.device = device
        self.dtype = _check_dtype(dtype if dtype is not None else getattr(model, "dtype", None))
        self.name = name if name is not None else (
            getattr(config, "_name_or_path", None) or type(model).__name__)

    # ------------------------------------------------------------------ public methods

    def for_sigma(self, sigma: float) -> DiffusionDenoiser:
        """This denoiser for noise ``sigma`` (itself when it already has that ``sigma``).

        :class:`~hybridcert.noise.GaussianNoise` calls it with its own ``sigma``,
        so that the timestep always matches the noise the engine draws.
        """
        sigma = float(check_positive("sigma", sigma))
        if self.sigma is not None:
            if self.sigma != sigma:
                raise ValueError(f"the denoiser was built for sigma = {self.sigma}, the noise has "
                                 f"sigma = {sigma}: leave the denoiser's sigma out or make them "
                                 "equal")
            return self
        bound = copy.copy(self)  # the model is shared, not copied
        bound.sigma, bound.timestep = sigma, diffusion_timestep(sigma, self.alphas_cumprod)
        return bound

    @property
    def noise_level(self) -> float | None:
        """``sqrt((1 - a_t) / a_t)`` at the chosen timestep (close to ``2 sigma``)."""
        if self.timestep is None:
            return None
        a = self.alphas_cumprod[self.timestep]
        return float(np.sqrt((1.0 - a) / a))

    def __call__(self, noisy):
        """The denoised batch: the same type, shape, dtype and device as ``noisy``, in [0, 1]."""
        import torch

        if self.timestep is None:
            raise ValueError("sigma is not set: give DiffusionDenoiser(sigma=...) or pass the "
                             "denoiser to GaussianNoise / SmoothedClassifier, which set it")
        is_torch = isinstance(noisy, torch.Tensor)
        batch = noisy if is_torch else torch.from_numpy(np.ascontiguousarray(noisy))
        if batch.ndim != 4:
            raise ValueError(f"the noisy batch must be 4-D ({self._layout_text()}), got shape "
                             f"{tuple(batch.shape)}")
        channels = batch.shape[-1] if self.layout == "channels_last" else batch.shape[1]
        if self.in_channels is not None and channels != self.in_channels:
            raise ValueError(f"the model takes {self.in_channels} channels, the batch has "
                             f"{channels} ({self._layout_text()}; set layout if it is the other)")
        device = self._device(batch)
        out = torch.empty_like(batch, device=batch.device)
        with torch.no_grad():
            for start in range(0, len(batch), self.batch_size):
                chunk = batch[start:start + self.batch_size].to(device, self.dtype)
                if self.layout == "channels_last":
                    chunk = chunk.permute(0, 3, 1, 2)
                x0 = self._denoise(chunk)
                if self.layout == "channels_last":
                    x0 = x0.permute(0, 2, 3, 1)
                out[start:start + len(x0)] = x0.to(out.device, out.dtype)
        return out if is_torch else out.numpy()

    def describe(self) -> dict:
        """What a certificate records: architecture and schedule fingerprints, the timestep rule
        and the timestep, the resolution and the precision (no memory address: two identical
        constructions describe themselves identically)."""
        import torch

        config = getattr(self.model, "config", None)
        config = config if isinstance(config, Mapping) else None
        module = isinstance(self.model, torch.nn.Module)
        params = sum(p.numel() for p in self.model.parameters()) if module else None
        if module and getattr(self, "_weights_sha1", None) is None:
            # The weights identify the denoiser (two checkpoints of one architecture must not
            # describe themselves alike); hashed once, on the CPU.
            digest = hashlib.sha1()
            for key, tensor in sorted(self.model.state_dict().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8)
                              .numpy().tobytes())
            self._weights_sha1 = digest.hexdigest()[:12]
        return {
            "kind": "diffusion", "name": self.name, "model": type(self.model).__name__,
            # A plain callable is known by its module and name only: give it a distinct `name`.
            "callable": None if module else
            f"{getattr(self.model, '__module__', '')}.{getattr(self.model, '__qualname__', '')}",
            "weights_sha1": getattr(self, "_weights_sha1", None) if module else None,
            "config_sha1": None if config is None else _sha1(json.dumps(
                {k: v for k, v in dict(config).items() if not str(k).startswith("_")},
                sort_keys=True, default=str).encode()),
            "parameters": params,
            "schedule": {"steps": int(self.alphas_cumprod.size), "prediction": "epsilon",
                         "alphas_cumprod_sha1": _sha1(self.alphas_cumprod.tobytes())},
            "sigma": self.sigma, "timestep_rule": TIMESTEP_RULE, "timestep": self.timestep,
            "noise_level": self.noise_level,
            "resolution": None if self.resolution is None else list(self.resolution),
            "interpolation": self.interpolation if self.resolution is not None else None,
            "layout": self.layout, "dtype": str(self.dtype).removeprefix("torch."),
            "batch_size": self.batch_size,
            "placement": "post-processing of the engine's noisy batch (after the noise and the "
                         "clamp); sigma and the L2 radius are in the input's pixel space",
        }

    def __repr__(self) -> str:
        return (f"DiffusionDenoiser(name={self.name!r}, sigma={self.sigma}, "
                f"timestep={self.timestep}, resolution={self.resolution})")

    # ------------------------------------------------------------------ internals

    def _denoise(self, x):
        """``(B, C, H, W)`` in [0, 1] -> the one-shot estimate of the clean image, in [0, 1]."""
        import torch
        import torch.nn.functional as F

        size = tuple(x.shape[2:])
        x = 2.0 * x - 1.0  # [-1, 1] pixels: the noise is 2 sigma here
        resize = self.resolution is not None and size != self.resolution
        if resize:
            x = F.interpolate(x, size=self.resolution, mode=self.interpolation, align_corners=False)
        a = float(self.alphas_cumprod[self.timestep])
        x_t = math.sqrt(a) * x
        t = torch.full((len(x),), self.timestep, dtype=torch.long, device=x.device)
        eps = self.model(x_t, t)
        eps = getattr(eps, "sample", eps)  # diffusers' output object
        if isinstance(eps, (tuple, list)):
            eps = eps[0]
        eps = eps[:, :x.shape[1]]  # learned-variance channels follow epsilon
        x0 = (x_t - math.sqrt(1.0 - a) * eps.to(x_t.dtype)) / math.sqrt(a)
        if resize:
            x0 = F.interpolate(x0, size=size, mode=self.interpolation, align_corners=False)
        return ((x0 + 1.0) / 2.0).clamp_(0.0, 1.0)

    def _device(self, batch):
        import torch

        if self.device is not None:
            return torch.device(self.device)
        if isinstance(self.model, torch.nn.Module):
            param = next(self.model.parameters(), None)
            if param is not None:
                return param.device
        return batch.device

    def _layout_text(self) -> str:
        return "(B, H, W, C)" if self.layout == "channels_last" else "(B, C, H, W)"


def load_denoiser(spec: str, *, sigma: float | None = None, device=None, dtype=None,
                  resolution=None, batch_size: int = 32,
                  layout: str = "channels_last") -> DiffusionDenoiser:
    """A :class:`DiffusionDenoiser` from a command-line spec (``--denoiser``).

    Parameters
    ----------
    spec : str
        ``"diffusers:PATH_OR_NAME"``: a diffusers ``UNet2DModel`` and its
        ``DDPMScheduler``, read with ``from_pretrained`` from a folder or hub
        name holding them at its root (``config.json``,
        ``scheduler_config.json``) or in ``unet/`` and ``scheduler/`` (a saved
        pipeline, such as ``google/ddpm-ema-church-256``).
    sigma, device, dtype, resolution, batch_size, layout
        As for :class:`DiffusionDenoiser`; ``device`` is where the model is
        moved (the guard's device, so that noisy batches stay there).
    """
    if not isinstance(spec, str) or not spec.startswith("diffusers:") or \
            not spec.split(":", 1)[1]:
        raise ValueError(f"denoiser must be 'diffusers:PATH_OR_NAME' (a UNet2DModel with its "
                         f"DDPMScheduler), got {spec!r}")
    from diffusers import DDPMScheduler, UNet2DModel

    name = spec.split(":", 1)[1]
    precision = {} if dtype is None else {"torch_dtype": _check_dtype(dtype)}
    unet = _from_pretrained(UNet2DModel, name, "unet", **precision).to(device).eval()
    scheduler = _from_pretrained(DDPMScheduler, name, "scheduler")
    return DiffusionDenoiser(unet, scheduler, sigma=sigma, layout=layout, resolution=resolution,
                             batch_size=batch_size, device=device, name=name)


def _from_pretrained(cls, name: str, subfolder: str, **kwargs):
    """``cls.from_pretrained`` at the root of ``name``, else in its ``subfolder`` (a pipeline)."""
    try:
        return cls.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as root_err:
        try:
            return cls.from_pretrained(name, subfolder=subfolder, **kwargs)
        except (OSError, ValueError) as err:
            raise ValueError(f"denoiser: no {cls.__name__} in {name!r} (at its root: "
                             f"{str(root_err).splitlines()[0]}; in {subfolder}/: "
                             f"{str(err).splitlines()[0]})") from err


def _check_schedule(alphas_cumprod) -> np.ndarray:
    a = np.asarray(alphas_cumprod, dtype=np.float64)
    if a.ndim != 1 or a.size < 1 or not np.all(np.isfinite(a)) or not np.all((a > 0) & (a <= 1)):
        raise ValueError("alphas_cumprod must be a non-empty 1-D array of values in (0, 1]")
    if np.any(np.diff(a) > 0):
        raise ValueError("alphas_cumprod must be non-increasing in t (more noise at larger t)")
    return a


def _check_resolution(resolution) -> tuple[int, int]:
    if isinstance(resolution, numbers.Integral) and not isinstance(resolution, bool):
        resolution = (resolution, resolution)
    try:
        h, w = (check_int("resolution", r, minimum=1) for r in resolution)
    except (TypeError, ValueError) as err:
        raise ValueError(f"resolution must be an int or (height, width) of ints >= 1, got "
                         f"{resolution!r}") from err
    return (h, w)


def _check_dtype(dtype):
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = dtype
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} (or the torch dtype), got {dtype!r}")
    return getattr(torch, name)


def _to_numpy(values):
    if type(values).__module__.startswith("torch"):
        return values.detach().cpu().double().numpy()
    return values


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:12]
