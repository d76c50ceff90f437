"""Fail closed: a base classifier that raises never reads as "not flagged" (issue 23, part 4)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import hybridcert as hc
from hybridcert import ModelError, SmoothedClassifier, UniformSubstitution
from hybridcert.scheduler import LookScheduler

TOKENS = np.arange(6) % 5
DARK = np.full((4, 4), 0.1)   # a clean input the working model does not flag


def dark_is_safe(tokens, images):
    return (images.mean(axis=(1, 2)) > 0.5).astype(int)


def always_raises(tokens, images):
    raise RuntimeError("weights not loaded")


class EveryThirdCall:
    """Raises on every third call, like a device that runs out of memory now and then."""

    def __init__(self):
        self.calls = 0

    def __call__(self, tokens, images):
        self.calls += 1
        if self.calls % 3 == 0:
            raise RuntimeError("CUDA out of memory (simulated)")
        return dark_is_safe(tokens, images)


def smoothed(model, decision="threshold", **policy):
    return SmoothedClassifier(model, discrete_noise=UniformSubstitution(beta=0.3, vocab_size=20),
                              sigma=0.25, decision=decision,
                              tau=0.5 if decision == "threshold" else None, random_state=0,
                              **policy)


def test_a_model_that_always_raises_is_an_error_never_not_flagged():
    guard = smoothed(always_raises)
    assert guard.on_model_error == "raise"   # the default fails closed
    with pytest.raises(ModelError, match="weights not loaded") as info:
        guard.predict(TOKENS, DARK, n=100)
    assert info.value.first_error == "RuntimeError: weights not loaded"
    assert info.value.errors == 1 and info.value.calls >= 1
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(ModelError):
        guard.estimate(TOKENS, DARK, n=100)
    for options in (dict(n=100), dict(targets=[(0, 0.0)])):   # fixed, then sequential
        with pytest.raises(ModelError):
            guard.certify(TOKENS, DARK, **options)
    # the working model says "not flagged" on this input: the broken one never does
    assert smoothed(dark_is_safe).predict(TOKENS, DARK, n=100) == 0


def test_flag_policy_flags_what_the_model_cannot_classify():
    guard = smoothed(always_raises, on_model_error="flag", max_error_rate=1.0)
    assert guard.predict(TOKENS, DARK, n=100) == 1
    cert = guard.certify(TOKENS, DARK, n=100)
    assert cert.label == 1 and cert.errors == cert.model_calls == 100
    assert cert.settings["on_model_error"] == "flag" and cert.settings["max_error_rate"] == 1.0
    # above max_error_rate the answer is an error whatever the policy
    with pytest.raises(ModelError, match="max_error_rate"):
        smoothed(always_raises, on_model_error="flag").predict(TOKENS, DARK, n=100)


def test_flag_policy_under_the_majority_rule_counts_errors_against_every_label():
    guard = smoothed(always_raises, "majority", on_model_error="flag", max_error_rate=1.0)
    assert guard.predict(TOKENS, DARK, n=100) == hc.ABSTAIN
    cert = guard.certify(TOKENS, DARK, n0=10, n=100)
    assert cert.label == hc.ABSTAIN and cert.abstentions == cert.errors == cert.model_calls


def test_a_batch_that_raises_now_and_then_is_served_in_halves():
    """Every third call raises: batches are served again in halves, no sample fails."""
    clean = smoothed(dark_is_safe).certify(TOKENS, DARK, n=500, random_state=4)
    flaky = EveryThirdCall()
    guard = smoothed(flaky)
    guard.batch_size = 64
    cert = guard.certify(TOKENS, DARK, n=500, random_state=4)
    assert flaky.calls > 500 // 64 + 1   # it did raise, and was retried
    assert cert.errors == 0 and cert.count == clean.count and cert.radii == clean.radii


def test_single_samples_that_raise_are_counted_logged_once_and_follow_the_policy(caplog):
    # batch_size 1: every third sample raises on its own
    with pytest.raises(ModelError, match="CUDA out of memory"):
        smoothed(EveryThirdCall(), batch_size=1).certify(TOKENS, DARK, n=60)
    guard = smoothed(EveryThirdCall(), batch_size=1, on_model_error="flag", max_error_rate=0.5)
    with caplog.at_level(logging.WARNING, logger="hybridcert"):
        cert = guard.certify(TOKENS, DARK, n=60)
    assert cert.errors == 20 and cert.count == (20,)   # the failed samples count as flagged
    assert cert.first_error == "RuntimeError: CUDA out of memory (simulated)"
    lines = [r for r in caplog.records if "raised on" in r.getMessage()]
    assert len(lines) == 1 and "20 of 60" in lines[0].getMessage()
    with pytest.raises(ModelError, match="20 of 60"):   # 1 in 3 is above the default 5%
        smoothed(EveryThirdCall(), batch_size=1, on_model_error="flag").certify(TOKENS, DARK,
                                                                                n=60)


def test_the_scheduler_fails_the_input_whose_model_raises_only():
    def raises_on_bright(tokens, images):
        if (images.mean(axis=(1, 2)) > 0.7).any():
            raise RuntimeError("cannot read this image")
        return dark_is_safe(tokens, images)

    scheduler = LookScheduler(smoothed(raises_on_bright), alpha=0.01, targets=[(0, 0.0)],
                              n_max=400)
    inputs = [(TOKENS, DARK, 1), (TOKENS, np.full((4, 4), 2.0), 2), (TOKENS, DARK, 3)]
    got = list(scheduler.certify_many(inputs, return_exceptions=True))
    assert isinstance(got[1], ModelError) and got[1].calls > 0
    for cert in (got[0], got[2]):   # the other inputs of the shared batches are unharmed
        assert cert.errors == 0 and cert.decisions[(0, 0.0)] == "dropped"
    with scheduler:
        future = scheduler.submit(TOKENS, np.full((4, 4), 2.0), 5)
        with pytest.raises(ModelError):
            future.result(timeout=30)
        assert scheduler.submit(TOKENS, DARK, 6).result(timeout=30).errors == 0


@pytest.mark.parametrize("kwargs,match", [
    ({"on_model_error": "ignore"}, "on_model_error must be one of"),
    ({"max_error_rate": 1.5}, r"max_error_rate must be in \[0, 1\]"),
    ({"max_error_rate": -0.1}, r"max_error_rate must be in \[0, 1\]"),
    ({"max_error_rate": float("nan")}, r"max_error_rate must be in \[0, 1\]"),
])
def test_bad_policies_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        smoothed(dark_is_safe, **kwargs)


def test_the_runner_rows_say_the_truth(tmp_path):
    pytest.importorskip("pandas")  # load_run returns a DataFrame
    data = (np.stack([TOKENS] * 2), np.stack([DARK] * 2), np.zeros(2, dtype=int))
    options = {"n0": 10, "n": 60, "progress": False, "report": False, "max_retries": 0}
    out = hc.certify_dataset(smoothed(always_raises), data, out=tmp_path / "raise", **options)
    rows = hc.load_run(out)
    assert rows["failed"].all() and (rows["errors"] >= 1).all()
    assert rows["first_error"].str.contains("weights not loaded").all()
    assert not rows["flagged"].any() or rows["failed"].all()   # a failed row is no decision
    flag = smoothed(EveryThirdCall(), batch_size=1, on_model_error="flag", max_error_rate=0.5)
    rows = hc.load_run(hc.certify_dataset(flag, data, out=tmp_path / "flag", **options))
    assert not rows["failed"].any() and (rows["errors"] == 20).all()
    assert rows["settings"].map(lambda s: s["on_model_error"]).eq("flag").all()


def test_the_tiny_llava_guard_given_a_channels_first_image_is_an_error(tmp_path):
    pytest.importorskip("transformers", reason="the HF guard needs the hf extra")
    pytest.importorskip("torch", reason="the HF guard needs torch")
    from hf_tiny import build_tiny_llava
    from hybridcert.models.hf import HFSafetyGuard

    try:
        guard = HFSafetyGuard.from_pretrained(build_tiny_llava(tmp_path / "llava"),
                                              policy="policy: flag violent or illegal content")
    except ImportError as err:   # a torchvision built for another torch (see test_hf.py)
        pytest.skip(f"transformers' image models do not load here: {err}")
    smooth = SmoothedClassifier(guard, sigma=0.25, decision="threshold", tau=0.01, clamp=(0, 1),
                                discrete_noise=UniformSubstitution(0.25, alphabet=guard.alphabet),
                                batch_size=8, random_state=0)
    channels_first = np.full((3, 32, 32), 0.3, np.float32)
    with pytest.raises(ModelError) as info:
        smooth.predict(guard.encode_text("how do i mix the powder"), channels_first, n=16)
    # never "not flagged": the call raised, with the guard's own reason
    assert info.value.errors >= 1 and info.value.first_error


def test_a_model_error_survives_pickling():
    import pickle

    err = ModelError("the base classifier raised", first_error="RuntimeError: x", errors=3,
                     calls=9)
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.first_error, back.errors, back.calls) == (str(err), "RuntimeError: x",
                                                                      3, 9)


def test_the_run_layer_and_the_command_line_set_the_policy(tmp_path, capsys):
    """--on-model-error and --max-error-rate reach the smoothed classifier and run.json; a bound
    under the raise policy (which never reads it) or outside [0, 1] is refused, nothing written."""
    from hybridcert.cli import build_parser, main
    from hybridcert.config import ModelConfig, RunConfig
    from hybridcert.run import plan

    args = build_parser().parse_args(["certify", "--on-model-error", "flag",
                                      "--max-error-rate", "0.2"])
    config = RunConfig.from_args(args)
    assert (config.model.on_model_error, config.model.max_error_rate) == ("flag", 0.2)
    default = plan(RunConfig(out=str(tmp_path / "a")))
    assert default.settings()["on_model_error"] == "raise"
    flagged = plan(RunConfig(model=ModelConfig(on_model_error="flag", max_error_rate=0.2)))
    assert flagged.settings()["on_model_error"] == "flag"
    assert flagged.settings()["max_error_rate"] == 0.2
    smooth = flagged.builder.smoothed(always_raises)
    assert (smooth.on_model_error, smooth.max_error_rate) == ("flag", 0.2)
    for argv, expected in ((["--max-error-rate", "0.2"], "no value with --on-model-error raise"),
                           (["--on-model-error", "flag", "--max-error-rate", "1.5"],
                            "a share in [0, 1]"),
                           (["--on-model-error", "ignore"], "invalid choice")):
        out = tmp_path / "refused"
        with pytest.raises(SystemExit) as stop:
            main(["certify", "--out", str(out), *argv])
        assert stop.value.code == 2 and expected in capsys.readouterr().err
        assert not out.exists()
