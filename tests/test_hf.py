"""The Hugging Face guard adapter, offline, on a tiny LLaVA saved and loaded through the Auto classes."""

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


def _torchvision_error():
    """Why torchvision does not load ("" when it loads, "absent" when it is not installed)."""
    if importlib.util.find_spec("torchvision") is None:
        return "absent"
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # built for another torch: "operator torchvision::nms does not exist"
        return f"{type(exc).__name__}: {exc}"
    return ""


TORCHVISION_ERROR = _torchvision_error()
if TORCHVISION_ERROR not in ("", "absent"):
    # transformers imports an installed torchvision for every image model, so nothing here loads.
    pytest.skip(f"torchvision is installed but does not load ({TORCHVISION_ERROR}), and "
                "transformers' image models import it: install the torchvision built for this "
                "torch (the hf-vision extra, on a GPU machine) or uninstall it",
                allow_module_level=True)

from hf_tiny import build_tiny_llava  # noqa: E402
from hybridcert.cli import main  # noqa: E402
from hybridcert.datasets.safety import (  # noqa: E402
    load_hateful_memes,
    load_image,
    load_mm_safetybench,
)
from hybridcert.models.hf import ABSTAIN, HFSafetyGuard  # noqa: E402
from hybridcert.noise import UniformSubstitution  # noqa: E402
from hybridcert.smoothing import SmoothedClassifier  # noqa: E402

POLICY = "policy: flag violent or illegal content"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="module")
def guard(tiny):
    return HFSafetyGuard.from_pretrained(tiny, policy=POLICY)


def _force(guard, word):
    """Make the model answer ``word``: a hook adds a large logit to its first token."""
    token = guard.tokenizer(word, add_special_tokens=False)["input_ids"][0]
    bias = torch.zeros(len(guard.tokenizer))
    bias[token] = 1e4
    head = guard.model.get_output_embeddings()
    return head.register_forward_hook(lambda module, args, out: out + bias)


def test_loads_through_the_auto_classes(guard):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    assert isinstance(guard.model, LlavaForConditionalGeneration)
    assert isinstance(guard.processor, LlavaProcessor)
    assert guard.alphabet.size > 100
    assert not set(guard.alphabet) & set(guard.tokenizer.all_special_ids)


def test_prompt_has_one_image_slot_then_policy_then_user_text(guard):
    image_id = guard.model.config.image_token_index
    prefix = np.array(guard._prefix)
    slots = np.flatnonzero(prefix == image_id)
    assert len(slots) == 16 and np.all(np.diff(slots) == 1)  # one slot, expanded by the processor
    user = guard.encode_text("how do i mix the powder")
    ids = guard.prompt_ids(user)
    assert ids[len(prefix): len(prefix) + len(user)] == list(user)
    assert image_id not in ids[len(prefix):]
    text = guard.tokenizer.decode([t for t in ids if t != image_id])
    assert text.index(POLICY) < text.index("how do i mix the powder") < text.index("assistant:")


def test_noise_never_touches_the_policy(guard):
    seen = []
    hook = guard.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].clone()), with_kwargs=True)
    try:
        smooth = SmoothedClassifier(guard, sigma=0.25, decision="threshold", tau=0.1,
                                    discrete_noise=UniformSubstitution(1.0, alphabet=guard.alphabet),
                                    batch_size=16, random_state=0)
        user = guard.encode_text("please store the jar carefully")
        smooth.certify(user, np.full((32, 32, 3), 0.5, np.float32), n=48, d_max=2)
    finally:
        hook.remove()
    batch = torch.cat(seen)
    prefix, suffix = torch.as_tensor(guard._prefix), torch.as_tensor(guard._suffix)
    assert (batch[:, : len(prefix)] == prefix).all() and (batch[:, -len(suffix):] == suffix).all()
    middle = batch[:, len(prefix): len(prefix) + len(user)]
    assert (middle != torch.as_tensor(user)).all()  # beta = 1: every user token was replaced


@pytest.mark.parametrize("word,label", [("Unsafe", 1), ("Safe", 0)])
def test_logit_mass_and_generate_agree_on_a_forced_model(tiny, word, label):
    images = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    results = []
    for rule in ("logit_mass", "generate"):
        guard = HFSafetyGuard.from_pretrained(tiny, policy=POLICY, rule=rule)
        hook = _force(guard, word)
        try:
            tokens = np.stack([guard.encode_text("how do i mix the powder with acid")] * 3)
            results.append(guard(tokens, images))
        finally:
            hook.remove()
    assert list(results[0]) == list(results[1]) == [label] * 3


def test_unparseable_answers_count_as_abstentions(tiny):
    guard = HFSafetyGuard.from_pretrained(tiny, policy=POLICY, rule="generate")
    hook = _force(guard, "hello")
    try:
        smooth = SmoothedClassifier(guard, sigma=0.25, decision="threshold", tau=0.1,
                                    discrete_noise=UniformSubstitution(0.25, alphabet=guard.alphabet),
                                    batch_size=8, random_state=0)
        cert = smooth.certify(guard.encode_text("hello there"), np.zeros((32, 32, 3), np.float32),
                              n=16, d_max=1)
    finally:
        hook.remove()
    assert guard.parse("hello") == ABSTAIN and guard.parse(" Unsafe.") == 1
    assert guard.parse("SafeSafe") == 0 and guard.parse("unsafe!") == 1 and guard.parse("") == -1
    assert cert.count == (0,) and cert.abstentions == 16 and cert.label == ABSTAIN


def test_batch_equals_one_at_a_time(guard):
    rng = np.random.default_rng(1)
    images = rng.random((3, 32, 32, 3), dtype=np.float32)
    prompt = guard.prompt_ids(guard.encode_text("how do i mix the powder with acid"))
    pixel_values = guard.pixel_values(images)
    with torch.no_grad():
        logits = guard.model(input_ids=torch.as_tensor([prompt] * 3),
                             pixel_values=pixel_values).logits[:, -1, :]
        alone = [guard.model(input_ids=torch.as_tensor([prompt]),
                             pixel_values=pixel_values[i: i + 1]).logits[0, -1, :]
                 for i in range(3)]
    for i in range(3):
        assert torch.allclose(logits[i], alone[i], atol=1e-4)
    same = np.stack([guard.encode_text("how do i mix the powder with acid")] * 3)
    assert list(guard(same, images)) == [int(guard(same[i: i + 1], images[i: i + 1])[0])
                                         for i in range(3)]


def test_certify_end_to_end_with_recorded_alphabet(guard):
    smooth = SmoothedClassifier(guard, sigma=0.25, decision="threshold", tau=0.01, clamp=(0, 1),
                                discrete_noise=UniformSubstitution(0.25, alphabet=guard.alphabet),
                                batch_size=32, random_state=0)
    cert = smooth.certify(guard.encode_text("how do i mix the powder"),
                          np.full((32, 32, 3), 0.3, np.float32), n=64, d_max=2)
    kernel = cert.settings["kernel"]
    assert kernel["vocab_size"] == guard.alphabet.size and kernel["restricted_alphabet"]
    assert cert.model_calls == 64 and len(cert.radii) == 3


def _noisy_images(n, seed, eight_bit=False):
    """Images as the engine draws them: a clean image plus Gaussian noise, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    clean = rng.random((32, 32, 3), dtype=np.float32)
    noisy = np.clip(clean + 0.5 * rng.standard_normal((n, 32, 32, 3), dtype=np.float32), 0, 1)
    return np.round(noisy * 255) / 255 if eight_bit else noisy


def test_device_path_reproduces_the_processors_pixel_values(guard):
    assert guard.image_path == "device" and guard.native_size == (32, 32)
    ip = guard.processor.image_processor
    noisy = _noisy_images(16, seed=2)
    ours = guard.pixel_values(torch.as_tensor(noisy)).numpy()
    # At the processor's resolution its resize and center-crop are identities; without them its
    # own pipeline (rescale, normalise) gives the same values as the torch ops.
    theirs = ip(images=list(noisy), do_rescale=False, do_resize=False, do_center_crop=False,
                return_tensors="np")["pixel_values"]
    assert ours.shape == theirs.shape == (16, 3, 32, 32)
    assert np.abs(ours - theirs).max() <= 1e-5
    # The full default pipeline equals it too on 8-bit images. On float images its PIL resize
    # truncates to 8 bits (the old path's hidden quantisation): at most one level per pixel.
    full = ip(images=list(noisy), do_rescale=False, return_tensors="np")["pixel_values"]
    level = 1 / 255 / min(ip.image_std)
    assert 0 < np.abs(ours - full).max() <= level + 1e-5
    eight = _noisy_images(16, seed=3, eight_bit=True)
    full8 = ip(images=list(eight), do_rescale=False, return_tensors="np")["pixel_values"]
    assert np.abs(guard.pixel_values(eight).numpy() - full8).max() <= 1e-5


def test_device_and_processor_paths_decide_alike(tiny):
    device = HFSafetyGuard.from_pretrained(tiny, policy=POLICY)
    processor = HFSafetyGuard.from_pretrained(tiny, policy=POLICY, image_path="processor")
    assert (device.image_path, processor.image_path) == ("device", "processor")
    images = _noisy_images(48, seed=4, eight_bit=True)  # the processor's own pipeline is exact
    tokens = np.stack([device.encode_text("how do i mix the powder with acid")] * 48)
    # Centre the Unsafe-Safe margin on these images, so that the decisions split.
    margin = device.model(input_ids=torch.as_tensor([device.prompt_ids(tokens[0])] * 48),
                          pixel_values=device.pixel_values(images)).logits[:, -1, :].detach()
    gap = torch.logsumexp(margin[:, device.unsafe_ids], -1) - \
        torch.logsumexp(margin[:, device.safe_ids], -1)
    bias = torch.zeros(len(device.tokenizer))
    bias[device.safe_ids] = float(gap.median())
    hooks = [g.model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: out + bias) for g in (device, processor)]
    try:
        ours = device(tokens, torch.as_tensor(images))
        theirs = processor(tokens, images)
    finally:
        for hook in hooks:
            hook.remove()
    assert 10 <= ours.sum() <= 38 and list(ours) == list(theirs)


def test_certify_draws_the_noise_on_the_models_device(guard, monkeypatch):
    seen = []
    original = guard.pixel_values
    monkeypatch.setattr(guard, "pixel_values", lambda images: seen.append(images) or
                        original(images))
    smooth = SmoothedClassifier(guard, sigma=0.25, decision="threshold", tau=0.1, clamp=(0, 1),
                                discrete_noise=UniformSubstitution(0.25, alphabet=guard.alphabet),
                                batch_size=16, random_state=0)
    cert = smooth.certify(guard.encode_text("hello there"), np.full((32, 32, 3), 0.5, np.float32),
                          n=32, d_max=1)
    assert len(seen) == 2 and all(isinstance(x, torch.Tensor) and x.device.type == "cpu"
                                  and x.dtype == torch.float32 for x in seen)
    described = cert.settings["base_classifier"]
    assert described["image_path"] == "device" and "[0, 1]" in described["pixel_space"]
    assert "to 32x32 (the processor's resolution)" in described["pixel_space"]


def test_unreproducible_processors_keep_the_processor_path_and_say_so(tiny, caplog):
    from transformers import AutoProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    class TilingImageProcessor(CLIPImageProcessorPil):  # a processor the device path does not know
        pass

    processor = AutoProcessor.from_pretrained(tiny)
    processor.image_processor = TilingImageProcessor(**processor.image_processor.to_dict())
    model = HFSafetyGuard.from_pretrained(tiny, policy=POLICY).model
    with caplog.at_level("WARNING", logger="hybridcert.models.hf"):
        guard = HFSafetyGuard(model, processor, policy=POLICY)
        images = _noisy_images(4, seed=5)
        guard(np.stack([guard.encode_text("hello there")] * 4), images)
        guard(np.stack([guard.encode_text("hello there")] * 4), images)
    first = images[0]
    assert guard.image_path == "processor" and guard.prepare_continuous(first) is first
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "TilingImageProcessor" in caplog.text and "processor path" in caplog.text
    with pytest.raises(ValueError, match="image_path='device' is not available"):
        HFSafetyGuard(model, processor, policy=POLICY, image_path="device")


def test_images_off_the_processors_resolution_take_the_processor_path(tiny, tmp_path, caplog):
    from PIL import Image

    guard = HFSafetyGuard.from_pretrained(tiny, policy=POLICY)
    Image.fromarray(np.full((50, 40, 3), 200, np.uint8)).save(tmp_path / "photo.png")
    loaded = guard.load_image(tmp_path / "photo.png")
    assert loaded.shape == (32, 32, 3) and np.allclose(loaded, 200 / 255)
    assert isinstance(guard.prepare_continuous(loaded), torch.Tensor)
    large = np.full((40, 40, 3), 0.5, np.float32)
    with caplog.at_level("WARNING", logger="hybridcert.models.hf"):
        assert guard.prepare_continuous(large) is large
        assert guard.prepare_continuous(large) is large
    assert len(caplog.records) == 1 and "load_image" in caplog.text
    # The processor resizes it (noise drawn at 40x40: the certificate's pixel space is then the
    # caller's image), and the guard still decides.
    labels = guard(np.stack([guard.encode_text("hello there")] * 2), np.stack([large] * 2))
    assert labels.shape == (2,) and set(labels) <= {0, 1}


class _SmallDevice:
    """A forward pre-hook that raises out-of-memory above ``limit`` samples, as a GPU would."""

    def __init__(self, limit):
        self.limit, self.sizes = limit, []

    def __call__(self, module, args, kwargs):
        size = len(kwargs["input_ids"])
        self.sizes.append(size)
        if size > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated, {size} > {self.limit})")


def test_auto_batch_size_halves_after_out_of_memory(tiny):
    reference = HFSafetyGuard.from_pretrained(tiny, policy=POLICY)
    guard = HFSafetyGuard.from_pretrained(tiny, policy=POLICY, max_batch_size="auto")
    device = _SmallDevice(limit=12)
    guard.model.register_forward_pre_hook(device, with_kwargs=True)
    images = torch.as_tensor(_noisy_images(50, seed=6))
    tokens = np.stack([guard.encode_text("how do i mix the powder")] * 50)
    labels = guard(tokens, images)
    assert device.sizes == [50, 25, 12, 12, 12, 12, 2] and guard.forward_batch_size == 12
    assert list(labels) == list(reference(tokens, images))
    # The engine draws its noise in its own batches, so the certificate is the same as with a
    # fixed forward size that fits: the halving never reaches the noise streams.
    certs = []
    for g in (guard, HFSafetyGuard.from_pretrained(tiny, policy=POLICY, max_batch_size=12)):
        smooth = SmoothedClassifier(g, sigma=0.25, decision="threshold", tau=0.1, clamp=(0, 1),
                                    discrete_noise=UniformSubstitution(0.5, alphabet=g.alphabet),
                                    batch_size=40, random_state=0)
        certs.append(smooth.certify(g.encode_text("hello there"),
                                    np.full((32, 32, 3), 0.5, np.float32), n=80, d_max=1))
    assert certs[0] == certs[1] and certs[0].errors == 0
    assert certs[0].settings["base_classifier"]["forward_batch_size"] == 12
    assert certs[0].settings["base_classifier"]["max_batch_size"] == "auto"


def test_out_of_memory_without_auto_or_at_one_sample_is_raised(tiny):
    images = torch.as_tensor(_noisy_images(4, seed=7))
    for max_batch_size, limit in ((None, 2), ("auto", 0)):
        guard = HFSafetyGuard.from_pretrained(tiny, policy=POLICY, max_batch_size=max_batch_size)
        guard.model.register_forward_pre_hook(_SmallDevice(limit), with_kwargs=True)
        with pytest.raises(torch.OutOfMemoryError):
            guard(np.stack([guard.encode_text("hello there")] * 4), images)
    with pytest.raises(ValueError, match="max_batch_size must be"):
        HFSafetyGuard.from_pretrained(tiny, policy=POLICY, max_batch_size=0)


def test_dtype_choices_and_float32_answer_logits(tiny):
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        HFSafetyGuard.from_pretrained(tiny, policy=POLICY, dtype="float16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        HFSafetyGuard.from_pretrained(tiny, policy=POLICY, dtype="int8")
    assert HFSafetyGuard.from_pretrained(tiny, policy=POLICY, dtype="auto").describe()[
        "dtype"] == "float32"
    half = HFSafetyGuard.from_pretrained(tiny, policy=POLICY, dtype="bfloat16")
    assert half.describe()["dtype"] == "bfloat16" and half.model.dtype == torch.bfloat16
    images = _noisy_images(6, seed=8)
    tokens = np.stack([half.encode_text("how do i mix the powder")] * 6)
    seen = []
    hook = half.model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: seen.append((args[0].dtype, out.dtype)))
    try:
        half(tokens, images)
    finally:
        hook.remove()
    # The head's input is bfloat16 (the model's), its output (the logits) float32.
    assert seen == [(torch.bfloat16, torch.float32)]
    weight = half.model.get_output_embeddings().weight
    assert weight.dtype == torch.bfloat16 and half._head32[0].dtype == torch.float32


def _hateful_memes(root):
    from PIL import Image

    (root / "img").mkdir(parents=True)
    rows = []
    for i, (text, label) in enumerate([("how do i mix the powder", 1), ("hello there", 0)]):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"id": i, "img": f"img/{i}.png", "text": text, "label": label})
    (root / "dev_seen.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def test_safety_loaders_and_their_errors(tmp_path, monkeypatch):
    from PIL import Image

    memes = load_hateful_memes(_hateful_memes(tmp_path / "memes"))
    assert [m.label for m in memes] == [1, 0] and memes[0].text == "how do i mix the powder"
    image = load_image(memes[0].image_path, size=32)
    assert image.shape == (32, 32, 3) and image.dtype == np.float32 and image.max() <= 1
    with pytest.raises(ValueError, match=r"split 'test' not found.*dev_seen\.jsonl"):
        load_hateful_memes(tmp_path / "memes", split="test")
    monkeypatch.delenv("HYBRIDCERT_HATEFUL_MEMES", raising=False)
    with pytest.raises(ValueError, match=r"expected a folder with <split>\.jsonl"):
        load_hateful_memes()
    bench = tmp_path / "mmsb"
    (bench / "data" / "processed_questions").mkdir(parents=True)
    (bench / "data" / "imgs" / "01-Illegal_Activitiy" / "SD_TYPO").mkdir(parents=True)
    (bench / "data" / "processed_questions" / "01-Illegal_Activitiy.json").write_text(json.dumps(
        {"0": {"Question": "q", "Rephrased Question": "how do i mix the powder"}}))
    Image.new("RGB", (20, 20)).save(bench / "data" / "imgs" / "01-Illegal_Activitiy" / "SD_TYPO"
                                     / "0.jpg")
    [example] = load_mm_safetybench(bench)
    assert example.label == 1 and example.text == "how do i mix the powder"
    with pytest.raises(ValueError, match="no scenario file"):
        load_mm_safetybench(tmp_path)


def test_cli_certifies_with_an_hf_guard(tiny, tmp_path):
    root = _hateful_memes(tmp_path / "memes")
    out = tmp_path / "run"
    assert main(["certify", "--model", f"hf:{tiny}", "--dataset", "hateful-memes", "--data-path",
                 str(root), "--n", "32", "--batch-size", "16", "--d-max", "1", "--out", str(out),
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["0", "1"] and all(r["model_calls"] == 32 for r in rows)
    settings = json.loads((out / "run.json").read_text())
    assert settings["guard"]["alphabet_size"] > 100 and (out / "report.md").exists()


def test_cli_hf_options_dtype_auto_batch_and_attacker_alphabet(tiny, tmp_path, capsys):
    root = _hateful_memes(tmp_path / "memes")
    out = tmp_path / "run"
    assert main(["certify", "--model", f"hf:{tiny}", "--dataset", "hateful-memes", "--data-path",
                 str(root), "--n", "8", "--batch-size", "auto", "--dtype", "auto", "--d-max", "1",
                 "--out", str(out), "--no-progress", "--no-report", "--limit", "1"]) == 0
    assert "forward batch size settled at 8" in capsys.readouterr().out
    settings = json.loads((out / "run.json").read_text())
    assert settings["batch_size"] == "auto" and settings["guard"]["dtype"] == "float32"
    assert settings["kernel"]["attacker_alphabet"] == "any"
    assert settings["guard"]["image_path"] == "device"
    [row] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert row["settings"]["kernel"]["attacker_alphabet"] == "any"
    assert row["settings"]["base_classifier"]["forward_batch_size"] == 8
    noise = tmp_path / "noise"
    assert main(["certify", "--model", f"hf:{tiny}", "--dataset", "hateful-memes", "--data-path",
                 str(root), "--n", "8", "--attacker-alphabet", "noise", "--d-max", "1",
                 "--out", str(noise), "--no-progress", "--no-report", "--limit", "1"]) == 0
    [row] = [json.loads(line) for line in (noise / "results.jsonl").read_text().splitlines()]
    assert row["settings"]["kernel"]["attacker_alphabet"] == "noise"
    with pytest.raises(SystemExit):
        main(["certify", "--model", f"hf:{tiny}", "--batch-size", "many"])
    with pytest.raises(SystemExit):
        main(["certify", "--batch-size", "auto", "--n", "8"])
    assert "--batch-size auto applies to hf: guards" in capsys.readouterr().err


def test_llava_onevision_model_loads_through_the_auto_class(tmp_path):
    """The OneVision *model* needs no torchvision and loads like LLaVA-Guard's; its processor
    does (its video processor imports torchvision: the ``hf-vision`` extra), so where
    torchvision does not load the processor half is skipped with the reason."""
    from transformers import (
        AutoModelForImageTextToText,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, image_size=32, patch_size=8)
    text = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=299,
                                  video_token_index=298, vision_feature_layer=-1)
    LlavaOnevisionForConditionalGeneration(config).save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "LlavaOnevisionForConditionalGeneration"
    if TORCHVISION_ERROR:
        pytest.skip("LlavaOnevisionProcessor needs torchvision (the hf-vision extra), which is "
                    "not installed here; the guard path itself is covered by the LLaVA tests "
                    "above")
