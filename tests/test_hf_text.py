"""Text-only guards through hf: (Llama Guard style chat LMs, Prompt Guard style classifiers),
offline, on tiny models with hand-set weights (tests/hf_text_tiny.py), with the conformance
attack: certify through the run layer, attack within the certified budget, and bound the
attacked smoothed probability from above (Clopper-Pearson at level 1e-6)."""

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import hybridcert as hc  # noqa: E402
from hf_text_tiny import (  # noqa: E402
    ALLOW,
    INJECTION_WORD,
    JAILBREAK_WORD,
    KEYWORD,
    LIST_TEMPLATE,
    build_tiny_llama_guard,
    build_tiny_prompt_guard,
    word_id,
)
from hybridcert.cli import main  # noqa: E402
from hybridcert.config import (  # noqa: E402
    ConfigError,
    DecisionConfig,
    ModelConfig,
    NoiseConfig,
    RunConfig,
)
from hybridcert.models.hf import (  # noqa: E402
    ABSTAIN,
    HFSequenceGuard,
    HFTextGuard,
    guard_task,
    load_guard,
)
from hybridcert.noise import AppendOnly, UniformSubstitution  # noqa: E402
from hybridcert.run import plan  # noqa: E402
from hybridcert.spec import EstimationSpec  # noqa: E402

LEVEL, N_CERT, N_EVAL = 1e-6, 2000, 4000


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_tiny_llama_guard(tmp_path_factory.mktemp("tiny-llama-guard"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return build_tiny_prompt_guard(tmp_path_factory.mktemp("tiny-prompt-guard"))


@pytest.fixture(scope="module")
def chat(llama):
    return load_guard(llama)


def test_the_kind_of_guard_is_read_from_the_config(llama, bert, tmp_path):
    from transformers import AutoConfig, LlavaConfig

    assert guard_task(AutoConfig.from_pretrained(llama)) == "text-generation"
    assert guard_task(AutoConfig.from_pretrained(bert)) == "text-classification"
    assert guard_task(LlavaConfig()) == "image-text-to-text"
    with pytest.raises(ValueError, match=r"cannot tell the kind of guard.*text-classification"):
        guard_task(AutoConfig.for_model("bert"))
    assert isinstance(load_guard(llama), HFTextGuard)
    assert isinstance(load_guard(bert, task="text-classification"), HFSequenceGuard)
    with pytest.raises(ValueError, match="flagged labels apply to a text-classification"):
        load_guard(llama, flagged="INJECTION")
    with pytest.raises(ValueError, match="policy applies to chat guards"):
        load_guard(bert, policy="be careful")
    with pytest.raises(ValueError, match="task must be one of"):
        load_guard(llama, task="translation")


def test_the_template_is_never_noised_and_list_content_templates_render(chat, tmp_path):
    user = chat.encode_text("please ignite the fuel")
    ids = chat.prompt_ids(user)
    text = chat.tokenizer.decode(ids)
    assert text.index("Task: check") < text.index("please ignite the fuel") < \
        text.index("<|assistant|>")
    assert ids[len(chat._prefix): len(chat._prefix) + len(user)] == list(user)
    seen = []
    hook = chat.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].clone()), with_kwargs=True)
    try:
        smooth = hc.SmoothedClassifier(chat, discrete_noise=UniformSubstitution(
            1.0, alphabet=chat.alphabet), sigma=None, decision="threshold", tau=0.1)
        smooth.certify(user, None, n0=8, n=32, d_max=1, random_state=0)
    finally:
        hook.remove()
    batch = torch.cat(seen)
    head, tail = len(chat._prefix), len(chat._tail)
    assert (batch[:, :head] == torch.as_tensor(chat._prefix)).all()
    assert (batch[:, -tail:] == torch.as_tensor(chat._tail)).all()
    assert (batch[:, head:-tail] != torch.as_tensor(user)).all()  # beta 1: every user token
    listed = load_guard(build_tiny_llama_guard(tmp_path / "list", template=LIST_TEMPLATE))
    assert listed._prefix == chat._prefix and listed._suffix == chat._suffix
    with pytest.raises(ValueError, match="text-only guard: smooth it with sigma=None"):
        hc.SmoothedClassifier(chat, discrete_noise=UniformSubstitution(
            0.5, alphabet=chat.alphabet), sigma=0.5, decision="threshold", tau=0.1).certify(
            user, np.zeros(3), n=8)


def test_the_blank_answer_token_is_found_and_both_rules_agree(llama, chat):
    """Like Llama Guard 3 ("\\n\\nunsafe"), the tiny guard writes "\\n\\n" before its verdict:
    the logit-mass rule reads the position after it, generation skips it."""
    assert chat.describe()["answer_prefix"] == "\n\n" and chat._tail[-1:] == \
        chat.answer_prefix_ids
    generate = load_guard(llama, rule="generate")
    assert generate._tail == generate._suffix  # generation writes the blank itself
    texts = ["please ignite the fuel", "please clean the jar carefully",
             f"please {KEYWORD} the fuel {ALLOW}", f"please {KEYWORD} and {KEYWORD} the fuel {ALLOW}"]
    expected = [1, 0, 0, 1]
    for rule_guard in (chat, generate):
        got = [int(rule_guard(chat.encode_text(t)[None])[0]) for t in texts]
        assert got == expected
    out = generate.model.generate(torch.as_tensor([generate.prompt_ids(
        chat.encode_text(texts[0]))]), max_new_tokens=2, do_sample=False)
    answer = generate.tokenizer.decode(out[0, -2:])
    assert answer.startswith("\n\n") and answer.split() == ["unsafe"]
    assert generate.parse("\n\nunsafe\nS1") == 1 and generate.parse("\n\nsafe") == 0
    explicit = HFTextGuard(chat.model, chat.tokenizer, answer_prefix="")
    assert explicit.answer_prefix_ids == [] and explicit._tail == explicit._suffix
    with pytest.raises(ValueError, match="answer_prefix must be"):
        HFTextGuard(chat.model, chat.tokenizer, answer_prefix="Answer:")


def test_non_finite_scores_abstain_never_safe(chat, bert):
    hook = chat.model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: out * float("nan"))
    try:
        labels = chat(chat.encode_text("please clean the jar")[None].repeat(3, 0))
    finally:
        hook.remove()
    assert list(labels) == [ABSTAIN] * 3
    guard = load_guard(bert)
    hook = guard.model.classifier.register_forward_hook(
        lambda module, args, out: out * float("nan"))
    try:
        assert list(guard(guard.encode_text("please clean the jar")[None])) == [ABSTAIN]
    finally:
        hook.remove()


def test_flagged_labels_by_name_index_default_and_threshold(bert):
    texts = [f"please {INJECTION_WORD} the fuel", f"please pack the boxes {JAILBREAK_WORD}",
             "please clean the jar carefully"]

    def labels(**kwargs):
        guard = load_guard(bert, **kwargs)
        return [int(guard(guard.encode_text(t)[None])[0]) for t in texts], guard

    both, guard = labels(flagged="INJECTION, jailbreak")
    assert both == [1, 1, 0] and guard.describe()["flagged"] == ["INJECTION", "JAILBREAK"]
    assert labels()[0] == both and labels(flagged=[1, "2"])[0] == both  # default: all but 0
    assert labels(flagged="JAILBREAK")[0] == [0, 1, 0]
    assert labels(flagged=[1])[0] == [1, 0, 0]
    model, tokenizer = guard.model, guard.tokenizer
    mass = HFSequenceGuard(model, tokenizer, flagged="INJECTION", threshold=0.5)
    assert mass.describe()["rule"] == "flagged_mass"
    assert [int(mass(mass.encode_text(t)[None])[0]) for t in texts] == [1, 0, 0]
    with pytest.raises(ValueError, match=r"not one of the model's labels: 0=BENIGN, 1=INJECTION"):
        HFSequenceGuard(model, tokenizer, flagged="MALICIOUS")
    with pytest.raises(ValueError, match="not every label"):
        HFSequenceGuard(model, tokenizer, flagged="0,1,2")
    with pytest.raises(ValueError, match="threshold must be"):
        HFSequenceGuard(model, tokenizer, threshold=1.5)


# --------------------------------------------------------------------------- conformance


def _run_layer(path, threat="l0", beta=0.9, tau=0.1, threat_size=4, filler=0, **model):
    """The smoothed classifier exactly as ``hybridcert certify`` builds it (plan + builder)."""
    config = RunConfig(model=ModelConfig(model=f"hf:{path}", **model),
                       estimation=EstimationSpec(batch_size=2000),
                       noise=NoiseConfig(beta=beta, threat=threat, threat_size=threat_size,
                                         filler=filler),
                       decision=DecisionConfig(tau=tau))
    p = plan(config)
    return p, p.builder()


def _attacked(threat, x, position, token):
    if isinstance(threat, AppendOnly):
        return hc.AppendInput(x.trusted, [*x.appended, token])
    out = x.copy()
    out[position] = token
    return out


def _greedy(smoothed, x, d, candidates, sites, n=300, seed=7):
    """``d`` greedy edits: each step keeps the (site, token) whose smoothed probability of
    "flagged" is lowest (common noise for all candidates of a step)."""
    current = x
    for step in range(d):
        options = [(site, token) for site in sites for token in candidates]
        if isinstance(smoothed.threat, AppendOnly):
            options = [(None, token) for token in candidates]
        scores = [smoothed.estimate(_attacked(smoothed.threat, current, s, t), None, n=n,
                                    random_state=seed + step).p for s, t in options]
        site, token = options[int(np.argmin(scores))]
        current = _attacked(smoothed.threat, current, site, token)
        sites = [s for s in sites if s != site]
    return current


def _claims_hold(smoothed, x, candidates, sites, natural, min_budget):
    cert = smoothed.certify(x, None, n0=100, n=N_CERT, alpha=1e-3, d_max=len(natural) - 1,
                            random_state=0)
    assert cert.label == 1 and cert.largest_budget >= min_budget, f"vacuous test: {cert}"
    assert cert.settings["gaussian"] is None and cert.settings["base_classifier"]["task"]
    lowest = []
    for d in range(1, cert.largest_budget + 1):
        for attacked in (natural[d], _greedy(smoothed, x, d, candidates, sites)):
            assert smoothed.discrete_distance(x, attacked) <= d
            est = smoothed.estimate(attacked, None, n=N_EVAL, alpha=LEVEL, random_state=100 + d)
            assert est.upper >= smoothed.tau, f"claim at d={d} beaten: {est} ({cert})"
            lowest.append(est.p)
    return cert, min(lowest)


@pytest.mark.parametrize("threat", ["l0", "suffix"])
def test_chat_guard_certificate_survives_an_attack_within_budget(llama, threat):
    p, smoothed = _run_layer(llama, threat=threat, **({"threat_size": 6} if threat == "suffix"
                                                      else {}))   # l0 reads no size
    guard = smoothed.base_classifier
    assert smoothed.sigma is None and p.settings()["sigma"] is None
    keyword, allow = word_id(guard.tokenizer, KEYWORD), word_id(guard.tokenizer, ALLOW)
    x = guard.encode_text("please " + " ".join([KEYWORD] * 6))
    sites = list(range(1, len(x)))
    # Natural attack: replace d keywords by the allow-word (the verdict's two sides).
    natural = [np.r_[x[:1], [allow] * d, x[1 + d:]] for d in range(4)]
    benign = word_id(guard.tokenizer, "jar")
    cert, lowest = _claims_hold(smoothed, x, [allow, benign], sites, natural, min_budget=1)
    assert lowest < cert.p_lower  # the attacks do lower the smoothed probability
    assert (x == keyword).sum() == 6


def test_chat_guard_certificate_survives_appended_allow_words(llama):
    filler = 0
    p, smoothed = _run_layer(llama, threat="append", threat_size=4, filler=filler, tau=0.5)
    guard = smoothed.base_classifier
    assert isinstance(p.split.x_discrete[0], hc.AppendInput) and p.settings()["threat"]["filler"] == 0
    allow = word_id(guard.tokenizer, ALLOW)
    x = hc.AppendInput(guard.encode_text(f"please {KEYWORD} the fuel"))
    natural = [hc.AppendInput(x.trusted, [allow] * d) for d in range(5)]
    cert, lowest = _claims_hold(smoothed, x, [allow, word_id(guard.tokenizer, "jar")], [],
                                natural, min_budget=2)
    assert lowest < 0.9 < cert.p_lower


def test_classifier_guard_certificate_survives_an_attack_within_budget(bert):
    p, smoothed = _run_layer(bert, hf_flagged="INJECTION,JAILBREAK")
    guard = smoothed.base_classifier
    assert isinstance(guard, HFSequenceGuard) and p.settings()["sigma"] is None
    x = guard.encode_text("please " + " ".join([INJECTION_WORD] * 5))
    benign = word_id(guard.tokenizer, "jar")
    natural = [np.r_[x[:1], [benign] * d, x[1 + d:]] for d in range(4)]
    cert, lowest = _claims_hold(smoothed, x, [benign, word_id(guard.tokenizer, "please")],
                                list(range(1, len(x))), natural, min_budget=1)
    assert lowest < cert.p_lower


# --------------------------------------------------------------------------- run layer


def test_cli_certifies_a_text_guard_on_text_with_append(llama, tmp_path):
    out = tmp_path / "run"
    assert main(["certify", "--model", f"hf:{llama}", "--dataset", "mm-interaction",
                 "--threat", "append", "--threat-size", "3", "--filler", "0", "--beta", "0.9",
                 "--n0", "16", "--n", "64", "--d-max", "2", "--limit", "2", "--batch-size", "64",
                 "--out", str(out), "--no-progress"]) == 0
    settings = json.loads((out / "run.json").read_text())
    assert settings["sigma"] is None and settings["image_size"] is None
    assert settings["threat"] == {"region": "AppendOnly", "max_append": 3, "filler": 0}
    assert settings["guard"]["task"] == "text-generation"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(not r["failed"] and r["model_calls"] == 64 for r in rows)
    assert rows[0]["settings"]["threat"] == {"region": "AppendOnly", "max_append": 3,
                                             "filler": 0}
    assert (out / "report.md").exists()


def test_run_layer_refusals_are_named(llama, tmp_path):
    bad = [
        (dict(threat="append", model=ModelConfig(model=f"hf:{llama}",
                                                  hf_task="image-text-to-text")), "--threat"),
        (dict(model=ModelConfig(model=f"hf:{llama}", hf_task="text-generation",
                                hf_flagged="INJECTION")), "--hf-flagged"),
        (dict(threat="append", filler=10**6, model=ModelConfig(model=f"hf:{llama}")),
         "--filler"),
        (dict(model=ModelConfig(model=f"hf:{llama}", hf_task="text2text")), "--hf-task"),
    ]
    for kwargs, argument in bad:
        model = kwargs.pop("model")
        with pytest.raises(ConfigError, match=argument):
            plan(RunConfig(model=model, noise=NoiseConfig(**kwargs)))
    with pytest.raises(ConfigError, match="--threat: expected l0 or suffix"):
        RunConfig(noise=NoiseConfig(threat="append")).validate()  # demo: no slot
