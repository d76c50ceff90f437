"""DiffusionDenoiser: the scale map, the timestep, the noise the model sees, end to end on a tiny UNet."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the diffusion denoiser runs on torch")

from hybridcert.denoisers import DiffusionDenoiser, diffusion_timestep, load_denoiser  # noqa: E402
from hybridcert.noise import GaussianNoise, UniformSubstitution  # noqa: E402
from hybridcert.smoothing import SmoothedClassifier  # noqa: E402

# DDPM's linear schedule (guided-diffusion's "linear" with 1000 steps), as guided-diffusion keeps it.
LINEAR = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))


class Spy:
    """An epsilon-model that predicts zero noise and records what it is given."""

    def __init__(self, channels_out=None):
        self.inputs, self.timesteps, self.channels_out = [], [], channels_out

    def __call__(self, x_t, t):
        self.inputs.append(x_t.detach().clone())
        self.timesteps.append(t.detach().clone())
        shape = (len(x_t), self.channels_out or x_t.shape[1], *x_t.shape[2:])
        return torch.zeros(shape, dtype=x_t.dtype)


def tiny_unet(seed=0, sample_size=16):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=sample_size, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()


def test_a_zero_noise_prediction_gives_back_the_noisy_input_clamped():
    rng = np.random.default_rng(0)
    noisy = 0.5 + 0.6 * rng.standard_normal((5, 6, 7, 3))  # well outside [0, 1] in places
    for sigma in (0.25, 0.5, 1.0):
        den = DiffusionDenoiser(Spy(), alphas_cumprod=LINEAR, sigma=sigma, dtype="float64",
                                batch_size=2)
        out = den(noisy)
        assert isinstance(out, np.ndarray) and out.dtype == noisy.dtype and out.shape == noisy.shape
        np.testing.assert_allclose(out, np.clip(noisy, 0, 1), rtol=0, atol=1e-12)
    # float32 torch, channels first: the same map up to float32 rounding
    batch = torch.as_tensor(noisy, dtype=torch.float32).permute(0, 3, 1, 2).contiguous()
    out = DiffusionDenoiser(Spy(), alphas_cumprod=LINEAR, sigma=0.5, layout="channels_first")(batch)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), batch.clamp(0, 1).numpy(), rtol=0, atol=2e-6)


def test_the_timestep_is_the_schedules_nearest_noise_level_to_two_sigma():
    from diffusers import DDPMScheduler

    for schedule in ("linear", "squaredcos_cap_v2"):
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule)
        a = scheduler.alphas_cumprod.double().numpy()
        for sigma in (0.25, 0.5, 1.0):
            gaps = [abs(np.sqrt((1 - a[t]) / a[t]) - 2 * sigma) for t in range(len(a))]
            nearest = min(range(len(a)), key=gaps.__getitem__)  # brute force
            spy = Spy()
            den = DiffusionDenoiser(spy, scheduler, sigma=sigma)
            assert diffusion_timestep(sigma, a) == den.timestep == nearest
            assert abs(den.noise_level - 2 * sigma) < 0.01 * 2 * sigma
            den(np.full((2, 4, 4, 3), 0.5, np.float32))
            assert spy.timesteps[0].tolist() == [nearest, nearest]
            assert den.describe()["timestep"] == nearest
    with pytest.raises(ValueError, match="sigma must lie in"):
        diffusion_timestep(500.0, LINEAR)


def test_the_model_sees_noise_of_sigma_in_pixel_scale_not_sigma_over_two():
    """Through the engine: on a constant image, x_t / sqrt(a_t) - (2 c - 1) is the engine's noise in
    [-1, 1] pixels, std 2 sigma; halved, std sigma in [0, 1] pixels (not sigma / 2)."""
    c, n, shape = 0.5, 64, (16, 16, 3)
    for sigma in (0.25, 0.5):
        spy = Spy()
        smoothed = SmoothedClassifier(lambda tokens, images: np.zeros(len(images), int),
                                      discrete_noise=None, sigma=sigma, denoiser=DiffusionDenoiser(
                                          spy, alphas_cumprod=LINEAR), random_state=0)
        smoothed.sample(None, np.full(shape, c), n)
        den = smoothed.gaussian.denoiser
        assert den.sigma == sigma  # set from the noise
        a_t = LINEAR[den.timestep]
        x_t = torch.cat(spy.inputs).double().numpy()
        noise = (x_t / np.sqrt(a_t) - (2 * c - 1)).ravel() / 2  # back to [0, 1] pixels
        m = noise.size
        # sample std of m iid normals: relative standard error 1 / sqrt(2 (m - 1)); 6 of them
        assert abs(noise.std() / sigma - 1) < 6 / np.sqrt(2 * (m - 1))
        assert abs(noise.mean()) < 6 * sigma / np.sqrt(m)
        # and x_t is the forward process at t: the noise in x_t has std ~ sqrt(1 - a_t)
        ratio = np.sqrt(a_t) * 2 * noise.std() / np.sqrt(1 - a_t)
        assert abs(ratio - 1) < 6 / np.sqrt(2 * (m - 1)) + abs(den.noise_level / (2 * sigma) - 1)


def test_resizing_to_the_models_resolution_and_back():
    spy = Spy()
    den = DiffusionDenoiser(spy, alphas_cumprod=LINEAR, sigma=0.5, resolution=16, dtype="float64")
    flat = np.full((3, 12, 12, 3), 0.3)
    out = den(flat)
    assert spy.inputs[0].shape == (3, 3, 16, 16) and out.shape == flat.shape
    np.testing.assert_allclose(out, flat, atol=1e-12)  # a constant survives both resizes
    assert den.describe()["resolution"] == [16, 16]
    unet = tiny_unet(sample_size=16)
    assert DiffusionDenoiser(unet, alphas_cumprod=LINEAR, sigma=0.5).resolution == (16, 16)


def test_the_guided_diffusion_recipe_on_a_stand_in_with_its_call_signature():
    class GuidedUNet(torch.nn.Module):
        """guided-diffusion's UNetModel signature: forward(x, timesteps, y=None) -> 2 C channels,
        epsilon then the learned variance (here: zero noise, then garbage)."""

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))
            self.seen = []

        def forward(self, x, timesteps, y=None):
            assert timesteps.shape == (len(x),) and not timesteps.is_floating_point()
            self.seen.append(x.shape)
            return torch.cat([0 * self.scale * x, 7 + x], dim=1)

    unet = GuidedUNet().eval()
    alphas_cumprod = LINEAR  # guided-diffusion's diffusion.alphas_cumprod: numpy float64
    # the recipe of DiffusionDenoiser's docstring, as written there
    denoiser = DiffusionDenoiser(lambda x_t, t: unet(x_t, t)[:, :3],
                                 alphas_cumprod=alphas_cumprod,
                                 resolution=256, device="cpu",
                                 name="guided-diffusion 256x256_diffusion_uncond")
    image = np.random.default_rng(1).random((224, 224, 3)).astype(np.float32)
    gauss = GaussianNoise(0.25, denoiser=denoiser)
    noisy = gauss.draw(image, 2, np.random.default_rng(2))
    out = gauss.denoise(noisy)
    assert unet.seen == [(2, 3, 256, 256)] and out.shape == noisy.shape
    # zero predicted noise: only the two bilinear resizes separate the output from the clamped input
    flat = np.full((2, 224, 224, 3), 0.25, np.float32)
    np.testing.assert_allclose(gauss.denoise(flat), flat, atol=1e-6)
    # the variance channels never leak in, with or without the recipe's slice
    direct = DiffusionDenoiser(unet, alphas_cumprod=alphas_cumprod, sigma=0.25)
    np.testing.assert_allclose(direct(noisy[:, :32, :32]), np.clip(noisy[:, :32, :32], 0, 1),
                               atol=2e-6)
    assert gauss.describe()["denoiser"]["name"] == "guided-diffusion 256x256_diffusion_uncond"


def test_a_tiny_unet_certifies_end_to_end_and_the_settings_are_stable():
    from diffusers import DDPMScheduler

    tokens, image = np.arange(5), np.full((16, 16, 3), 0.8, np.float32)

    def bright(toks, images):
        return (np.asarray(images).mean(axis=(1, 2, 3)) > 0.5).astype(int)

    def run():
        den = DiffusionDenoiser(tiny_unet(), DDPMScheduler(num_train_timesteps=1000), batch_size=16)
        smoothed = SmoothedClassifier(
            bright, discrete_noise=UniformSubstitution(0.25, vocab_size=50), sigma=0.25,
            clamp=(0, 1), denoiser=den, decision="threshold", tau=0.5, random_state=0,
            batch_size=40)
        return smoothed.certify(tokens, image, n=60, alpha=0.01, d_max=1)

    cert, again = run(), run()
    assert cert.model_calls == 60 and len(cert.radii) == 2
    recorded = cert.settings["gaussian"]["denoiser"]
    assert recorded["kind"] == "diffusion" and recorded["model"] == "UNet2DModel"
    assert recorded["sigma"] == 0.25 and recorded["timestep"] == 144
    assert recorded["resolution"] == [16, 16] and recorded["parameters"] > 0
    assert cert.settings == again.settings and cert == again
    assert "0x" not in json.dumps(cert.settings)


def test_load_denoiser_reads_a_saved_model_and_a_saved_pipeline(tmp_path):
    from diffusers import DDPMScheduler

    unet, scheduler = tiny_unet(seed=3), DDPMScheduler(num_train_timesteps=1000)
    unet.save_pretrained(tmp_path / "flat")
    scheduler.save_pretrained(tmp_path / "flat")
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    scheduler.save_pretrained(tmp_path / "pipe" / "scheduler")
    batch = np.random.default_rng(4).random((3, 16, 16, 3)).astype(np.float32)
    expected = DiffusionDenoiser(unet, scheduler, sigma=0.5)(batch)
    for folder in ("flat", "pipe"):
        den = load_denoiser(f"diffusers:{tmp_path / folder}", sigma=0.5, device="cpu",
                            dtype="float32")
        np.testing.assert_allclose(den(batch), expected, atol=1e-6)
        assert den.describe()["name"] == str(tmp_path / folder)
        assert den.describe()["config_sha1"] == DiffusionDenoiser(
            unet, scheduler, sigma=0.5).describe()["config_sha1"]
    wide = load_denoiser(f"diffusers:{tmp_path / 'flat'}", dtype="float64")
    assert wide.dtype == next(wide.model.parameters()).dtype == torch.float64
    with pytest.raises(ValueError, match="diffusers:PATH_OR_NAME"):
        load_denoiser("guided:/x")
    with pytest.raises(ValueError, match="no UNet2DModel"):
        load_denoiser(f"diffusers:{tmp_path / 'missing'}")


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="exactly one of scheduler"):
        DiffusionDenoiser(Spy())
    with pytest.raises(ValueError, match="alphas_cumprod must be non-increasing"):
        DiffusionDenoiser(Spy(), alphas_cumprod=LINEAR[::-1])
    with pytest.raises(ValueError, match="layout must be one of"):
        DiffusionDenoiser(Spy(), alphas_cumprod=LINEAR, layout="nhwc")
    with pytest.raises(ValueError, match="resolution must be"):
        DiffusionDenoiser(Spy(), alphas_cumprod=LINEAR, resolution=(0, 3))
    with pytest.raises(ValueError, match="sigma is not set"):
        DiffusionDenoiser(Spy(), alphas_cumprod=LINEAR)(np.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"built for sigma = 0\.25"):
        GaussianNoise(0.5, denoiser=DiffusionDenoiser(Spy(), alphas_cumprod=LINEAR, sigma=0.25))
    with pytest.raises(ValueError, match="must be 4-D"):
        DiffusionDenoiser(Spy(), alphas_cumprod=LINEAR, sigma=0.5)(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="takes 3 channels, the batch has 16"):
        DiffusionDenoiser(tiny_unet(), alphas_cumprod=LINEAR, sigma=0.5)(np.zeros((1, 3, 16, 16)))
    from diffusers import DDPMScheduler

    with pytest.raises(ValueError, match="prediction_type must be 'epsilon'"):
        DiffusionDenoiser(Spy(), DDPMScheduler(prediction_type="v_prediction"))


def test_a_plain_callable_is_recorded_by_name_not_by_memory_address():
    def sharpen(batch):
        return batch

    described = GaussianNoise(0.5, denoiser=sharpen).describe()["denoiser"]
    assert described.endswith("sharpen") and "0x" not in described


def test_the_cli_certifies_an_hf_guard_with_a_saved_denoiser_and_records_it(tmp_path):
    pytest.importorskip("transformers", reason="the hf: guard of the end-to-end run")
    from diffusers import DDPMScheduler

    from hf_tiny import build_tiny_llava
    from hybridcert.cli import main

    tiny_unet(seed=1).save_pretrained(tmp_path / "den")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "den")
    guard = build_tiny_llava(tmp_path / "guard")
    out = tmp_path / "run"
    argv = ["certify", "--model", f"hf:{guard}", "--denoiser", f"diffusers:{tmp_path / 'den'}",
            "--n", "16", "--batch-size", "16", "--d-max", "1", "--limit", "2", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    settings = json.loads((out / "run.json").read_text())
    denoiser = settings["gaussian"]["denoiser"]
    assert denoiser["name"] == str(tmp_path / "den")
    assert denoiser["noise_level"] == pytest.approx(1.0, rel=0.05)  # 2 sigma
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and not any(r["failed"] for r in rows)
    assert rows[0]["settings"]["gaussian"]["denoiser"] == denoiser
    assert "Denoiser:" in (out / "report.md").read_text()
    assert main(argv) == 0  # the recorded description is stable: the run resumes


@pytest.mark.parametrize("argv, flag", [
    (["--denoiser", "unet.pt", "--model", "hf:x"], "--denoiser"),
    (["--denoiser", "diffusers:x"], "--denoiser"),  # the demo model reads no RGB image
])
def test_bad_denoiser_options_exit_2(tmp_path, capsys, argv, flag):
    from hybridcert.cli import main

    with pytest.raises(SystemExit) as info:
        main(["certify", *argv, "--out", str(tmp_path / "r"), "--no-progress"])
    assert info.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_two_checkpoints_of_one_architecture_describe_themselves_differently():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    a = DiffusionDenoiser(tiny_unet(seed=1), scheduler, sigma=0.5).describe()
    b = DiffusionDenoiser(tiny_unet(seed=2), scheduler, sigma=0.5).describe()
    again = DiffusionDenoiser(tiny_unet(seed=1), scheduler, sigma=0.5).describe()
    assert a["weights_sha1"] != b["weights_sha1"] and a == again
