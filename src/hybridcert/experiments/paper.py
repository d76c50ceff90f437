"""``hybridcert experiment paper``: the paper's comparisons on the bundled multimodal demo.

On the first ``n_examples`` truly unsafe test examples of ``mm-interaction``
(the threshold rule certifies that they stay flagged), with the same number of
model calls for every method:

1. hybrid versus image-only versus text-only smoothing (same base model):
   mean certified image radius at d = 0, hybrid radius at d = 1, mean largest
   text budget;
2. the beta ablation (0.1, 0.25, 0.5, 1.0; one model trained per beta);
3. sigma 0.5 versus 1.0;
4. MMCert-style ablation on these interaction-only examples;
5. the joint attack against the certificate on ``attack_examples`` examples.

Tables go to ``paper.md``, the figures ``attack_vs_certificate.png`` and
``beta_ablation.png``, the raw numbers to ``paper.json``. Every sentence of
``paper.md`` states numbers of the run (``paper.json["findings"]``), none a
conclusion written in advance.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from .._format import pct as _pct
from .._format import table as _table
from .._validation import check_int, check_open_unit
from ..attacks import JointAttack
from ..baselines import MMCertSmoother, ablation_delta
from ..certificate.hybrid import certified_radius, worst_case_probability
from ..datasets import load_dataset
from ..models import demo
from ..noise import UniformSubstitution, attack_atoms
from ..record import Certificate
from ..sampling import ABSTAIN
from ..smoothing import SmoothedClassifier

logger = logging.getLogger(__name__)

TAU = 0.05
PAPER_TAU = 4.6e-5  # the paper's threshold, for a guard that is almost never wrong


def paper_experiment(out: str | Path, *, n_examples: int = 40, n: int = 2000, n0: int = 50,
                     alpha: float = 0.001, attack_examples: int = 8, seed: int = 0,
                     cache=None, progress: bool = True) -> Path:
    """Run every comparison and write ``paper.md``, ``paper.json`` and the figures
    ``attack_vs_certificate.png`` and ``beta_ablation.png`` into ``out``.

    Every argument is checked before any work (a ``ValueError`` naming it,
    with its command-line option); nothing is written then.
    """
    n_examples, n, n0, attack_examples, seed = (
        check_int(name, value, minimum=minimum) for name, value, minimum in (
            ("n_examples (--examples)", n_examples, 1), ("n (--n)", n, 1), ("n0 (--n0)", n0, 1),
            ("attack_examples (--attack-examples)", attack_examples, 1),
            ("seed (--seed)", seed, 0)))
    alpha = float(check_open_unit("alpha (--alpha)", alpha))
    data = load_dataset("mm-interaction", seed=seed)
    available = np.flatnonzero(data.test.y == 1)
    if n_examples > available.size:
        raise ValueError(f"n_examples (--examples) must be at most {available.size} (the unsafe "
                         f"test examples of mm-interaction), got {n_examples}")
    if attack_examples > n_examples:
        raise ValueError("attack_examples (--attack-examples) must be at most n_examples "
                         f"(--examples) = {n_examples}, got {attack_examples}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out (--out) {out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    unsafe = available[:n_examples]
    tokens = [data.test.x_discrete[i] for i in unsafe]
    images = [data.test.x_continuous[i] for i in unsafe]
    def say(message, **_):
        (logger.info if progress else logger.debug)("%s", message)

    results: dict = {"examples": len(unsafe), "n": n, "alpha": alpha, "tau": TAU,
                     "vocab_size": data.vocab_size}

    def certify_all(smooth, d_max):
        start = time.perf_counter()
        certs = [smooth.certify(t, x, n0=n0, n=n, alpha=alpha, d_max=d_max,
                                random_state=np.random.default_rng([seed, k]))
                 for k, (t, x) in enumerate(zip(tokens, images))]
        return certs, (time.perf_counter() - start) / len(certs)

    def kernel(beta):
        return UniformSubstitution(beta=beta, vocab_size=data.vocab_size)

    def summary(certs, seconds, text=True, image=True):
        flagged = [c for c in certs if c.label != ABSTAIN]
        budgets = [c.largest_budget for c in flagged]
        return {
            "certified share": len(flagged) / len(certs),
            "mean radius d=0": float(np.mean([c.radius(0) for c in certs])) if image else None,
            "mean radius d=1": float(np.mean([c.radius(1) for c in certs])) if image and text
            else None,
            "mean largest budget": float(np.mean(budgets)) if text and budgets else
            (0.0 if text else None),
            "mean radius at largest budget": float(np.mean(
                [c.radius(c.largest_budget) for c in flagged])) if image and flagged else None,
            "mean p_lower": float(np.mean([c.p_lower for c in certs])),
            "model calls per example": float(np.mean([c.model_calls for c in certs])),
            "seconds per example": seconds,
        }

    # 1. hybrid versus unimodal smoothing, one base model, the same budget of calls.
    say("training/loading the demo models ...", flush=True)
    model = demo.mm_interaction_model(data, sigma=0.5, beta=0.25, random_state=seed, cache=cache)
    d_max = 4
    methods = {
        "hybrid": SmoothedClassifier(model, discrete_noise=kernel(0.25), sigma=0.5,
                                     decision="threshold", tau=TAU, batch_size=1000),
        "image-only": SmoothedClassifier(model, discrete_noise=None, sigma=0.5,
                                         decision="threshold", tau=TAU, batch_size=1000),
        "text-only": SmoothedClassifier(model, discrete_noise=kernel(0.25), sigma=None,
                                        decision="threshold", tau=TAU, batch_size=1000),
    }
    certs_by_method = {}
    results["methods"] = {}
    for name, smooth in methods.items():
        say(f"certifying: {name}", flush=True)
        certs, seconds = certify_all(smooth, 0 if name == "image-only" else d_max)
        certs_by_method[name] = certs
        results["methods"][name] = summary(certs, seconds, text=name != "image-only",
                                           image=name != "text-only")

    hybrid = certs_by_method["hybrid"]
    spec = hybrid[0].settings["attack"][0]
    results["attacker alphabet"] = spec.get("attacker_alphabet")
    # What one changed token costs before any image shift: p_lower - V_1(0), read off the
    # certificate itself (it depends on the kernel and the attacker's alphabet).
    results["d=1 cost at r=0"] = float(np.median(
        [c.p_lower - certified_bound(c, 1, 0.0) for c in hybrid]))
    results["radius ratio"] = radius_ratio(
        float(np.median([c.p_lower for c in hybrid])), sigma=0.5, spec=spec,
        taus=(TAU, PAPER_TAU), vocab_sizes=(data.vocab_size, 32_000))

    # 2. beta ablation and 3. sigma, each with its own model trained under that noise.
    results["beta"] = {}
    for beta in (0.1, 0.25, 0.5, 1.0):
        say(f"beta = {beta}", flush=True)
        m = demo.mm_interaction_model(data, sigma=0.5, beta=beta, random_state=seed, cache=cache)
        smooth = SmoothedClassifier(m, discrete_noise=kernel(beta), sigma=0.5,
                                    decision="threshold", tau=TAU, batch_size=1000)
        results["beta"][beta] = summary(*certify_all(smooth, d_max))
    results["sigma"] = {}
    for sigma in (0.5, 1.0):
        say(f"sigma = {sigma}", flush=True)
        m = demo.mm_interaction_model(data, sigma=sigma, beta=0.25, random_state=seed, cache=cache)
        smooth = SmoothedClassifier(m, discrete_noise=kernel(0.25), sigma=sigma,
                                    decision="threshold", tau=TAU, batch_size=1000)
        results["sigma"][sigma] = summary(*certify_all(smooth, d_max))

    # 4. MMCert-style ablation on the same (interaction-only) examples and call budget: a
    #    generous sub-sample (keeps both halves of the evidence) and a small one (certifies more
    #    elements per modality, but rarely keeps both halves), each under both decision rules.
    results["mmcert"] = []
    for k_text, k_image in ((5, 200), (2, 20)):
        say(f"MMCert-style ablation, keep {k_text} tokens and {k_image} pixels", flush=True)
        ablation = demo.mm_interaction_ablation_model(data, k_text=k_text, k_image=k_image,
                                                      random_state=seed, cache=cache)
        for decision in ("threshold", "majority"):
            mmcert = MMCertSmoother(ablation, k_text=k_text, k_image=k_image,
                                    mask_id=data.vocab_size, decision=decision,
                                    tau=TAU if decision == "threshold" else None,
                                    batch_size=1000)
            start = time.perf_counter()
            mm = [mmcert.certify(t, x, n0=n0, n=n, alpha=alpha, e_text=[0, 1, 2],
                                 e_image=[0, 1, 5, 20],
                                 random_state=np.random.default_rng([seed, k]))
                  for k, (t, x) in enumerate(zip(tokens, images))]
            results["mmcert"].append({
                "k_text": k_text, "k_image": k_image, "decision": decision,
                "certified share (no change)": float(np.mean([c.certified[0, 0] for c in mm])),
                "certified share, 1 token": float(np.mean([c.certified[1, 0] for c in mm])),
                "certified share, 1 pixel": float(np.mean([c.certified[0, 1] for c in mm])),
                "certified share, 1 token and 1 pixel": float(np.mean(
                    [c.certified[1, 1] for c in mm])),
                "mean p_lower": float(np.mean([c.p_lower for c in mm])),
                "model calls per example": float(np.mean([c.model_calls for c in mm])),
                "seconds per example": (time.perf_counter() - start) / len(mm),
            })

    # 5. the joint attack against the hybrid certificate.
    say("joint attack", flush=True)
    attack = JointAttack(methods["hybrid"], model.module, random_state=seed)
    radii = [0.0, 0.5, 1.0, 1.5]
    results["attack"] = []
    for k in range(attack_examples):
        cert = certs_by_method["hybrid"][k]
        for res in attack.run(tokens[k], images[k], budgets=[0, 1, 2], radii=radii, n_eval=n,
                              alpha=alpha):
            certified = cert.label != ABSTAIN and res.d <= cert.largest_budget and \
                res.radius <= cert.radius(res.d)
            results["attack"].append({
                "example": k, "d": res.d, "r": res.radius, "p_attack": res.p_estimate,
                "p_upper": res.p_upper, "certified": bool(certified),
                "certified radius": cert.radius(res.d) if res.d <= cert.largest_budget else 0.0,
                "certified bound": certified_bound(cert, res.d, res.radius),
                "beaten": bool(certified and res.p_upper < TAU), "base_label": res.base_label})
    results["attack summary"] = attack_summary(results["attack"])
    results["findings"] = findings(results)
    (out / "paper.json").write_text(json.dumps(results, indent=2, default=str))
    _write_markdown(out, results)
    _plot(out, results, certs_by_method)
    return out / "paper.md"


def certified_bound(cert: Certificate, d: int, radius) -> float | np.ndarray:
    """The smallest smoothed probability of the flagged label that ``cert`` allows after ``d``
    discrete changes and an L2 shift of ``radius`` (``V_d(r)``; vectorised over ``radius``).

    It is a valid lower bound whether or not it clears ``tau``; 0 beyond the attackable
    positions. The gap between an attack's smoothed probability and this bound measures how
    tight the certificate is.
    """
    spec = cert.settings["attack"][0]
    attackable = spec.get("inside", 0) + spec.get("outside", 0)
    radius = np.asarray(radius, dtype=float)
    if d > attackable or cert.settings["sigma"] is None:
        return 0.0 if radius.ndim == 0 else np.zeros_like(radius)
    bounds = [worst_case_probability(cert.p_lower, sigma=cert.settings["sigma"], atoms=atoms,
                                     radius=radius) for atoms in attack_atoms(spec, d)]
    out = np.minimum.reduce([np.asarray(b, dtype=float) for b in bounds])
    return float(out) if out.ndim == 0 else out


def radius_ratio(p_lower: float, *, sigma: float, spec: dict, taus, vocab_sizes) -> list[dict]:
    """``r*(0)`` and ``r*(1)`` of one lower bound under a recorded uniform-kernel attack ``spec``
    with its alphabet size replaced, for each ``tau``: how much the ratio at d = 1 depends on
    each (the certificate only, no model; the worst case over the attacker's options)."""
    out = []
    for tau in taus:
        for vocab in vocab_sizes:
            r0, r1 = (min(certified_radius(p_lower, sigma=sigma, tau=tau, atoms=atoms)
                          for atoms in attack_atoms(dict(spec, vocab_size=vocab), d))
                      for d in (0, 1))
            out.append({"p_lower": p_lower, "tau": tau, "V": vocab, "r0": r0, "r1": r1,
                        "ratio": r1 / r0 if r0 else None})
    return out


def attack_summary(attacks: list[dict]) -> list[dict]:
    """Per attacked budget ``(d, r)``: the lowest smoothed probability the attack reaches, the
    certified bound of that same example there, and the median gap over examples."""
    out = []
    for d, r in sorted({(a["d"], a["r"]) for a in attacks}):
        at = [a for a in attacks if a["d"] == d and a["r"] == r]
        low = min(at, key=lambda a: a["p_attack"])
        out.append({
            "d": d, "r": r, "attacked": len(at), "certified": sum(a["certified"] for a in at),
            "lowest p_attack": low["p_attack"], "example": low["example"],
            "bound there": low["certified bound"],
            "median gap": float(np.median([a["p_attack"] - a["certified bound"] for a in at])),
            "beaten": sum(a["beaten"] for a in at)})
    return out


def _cell(value, key: str) -> str:
    if value is None:
        return "-"
    if "share" in key:
        return _pct(value)
    if "calls" in key:
        return f"{value:,.0f}"
    return f"{value:.4f}" if "seconds" in key else f"{value:.3f}"


COLUMNS = {
    "certified share": "share of the examples flagged (lower bound on p(unsafe) >= tau), so "
                       "certified at d = 0, r = 0",
    "mean radius d=0": "mean certified L2 radius r*(0) over all examples, 0 for an example not "
                       "certified (image-only smoothing certifies d = 0 only)",
    "mean radius d=1": "the same for r*(1): one changed token and an image shift",
    "mean largest budget": "mean largest number of changed tokens certified at radius 0, over "
                           "the flagged examples",
    "mean radius at largest budget": "mean r*(d) at each flagged example's largest budget d",
    "mean p_lower": "mean lower confidence bound on p(unsafe) under the method's noise",
    "model calls per example": "noisy samples sent to the model: n per estimate, plus n0 "
                               "selection samples under the majority rule",
    "seconds per example": "wall time; it depends on the machine and its load, so compare only "
                           "within a run",
}


ALPHABETS = {"any": "the attacker may write any token, also outside the noise alphabet",
             "noise": "the attacker is assumed to write only tokens of the noise alphabet"}


def _write_markdown(out: Path, r: dict) -> None:
    hy, im, tx = r["methods"]["hybrid"], r["methods"]["image-only"], r["methods"]["text-only"]
    keys = ["certified share", "mean radius d=0", "mean radius d=1", "mean largest budget",
            "mean p_lower", "model calls per example", "seconds per example"]
    lines = ["# The paper's comparisons on the bundled demo", "",
             f"On the first {r['examples']} truly unsafe `mm-interaction` test examples, under "
             f"the threshold rule (flag when the lower bound on p(unsafe) reaches tau = "
             f"{r['tau']}); n = {r['n']:,} samples per estimate, alpha = {r['alpha']}. Every "
             "method spends the same model calls per example. Attacker alphabet "
             f"`{r['attacker alphabet']}`: {ALPHABETS.get(r['attacker alphabet'], 'not recorded')}"
             + (" (an assumption about the tokenizer and the input channel)"
                if r["attacker alphabet"] == "noise" else "")
             + ". Raw numbers, including every attacked budget, are in `paper.json`.", "",
             "Columns:", ""]
    lines += [f"- *{k}*: {v}." for k, v in COLUMNS.items()]

    # 1. hybrid versus unimodal. Every sentence below states numbers of this run (no prose
    # claims that a rerun could contradict).
    f = r["findings"]
    lines += ["", "## Hybrid versus unimodal smoothing (same base model, same model calls)", ""]
    lines += _table(["method", *keys], [[name] + [_cell(s[k], k) for k in keys]
                                        for name, s in r["methods"].items()])
    lines += ["", "**Measured.** The hybrid's mean radius at d = 1 (a changed token and an image "
              f"shift) is {_num(hy['mean radius d=1'])}, "
              + _share_of(f["hybrid r1 / image-only r0"]) + " of image-only's mean radius at "
              f"d = 0 ({_num(im['mean radius d=0'])}); its mean largest text budget is "
              f"{_num(hy['mean largest budget'])} tokens, "
              + _share_of(f["hybrid budget / text-only budget"]) + " of text-only's "
              f"({_num(tx['mean largest budget'])}). Mean p_lower: hybrid "
              f"{_num(hy['mean p_lower'])}, image-only {_num(im['mean p_lower'])}, text-only "
              f"{_num(tx['mean p_lower'])}. One changed token costs p_lower - V_1(0) = "
              f"{r['d=1 cost at r=0']:.3f} before any image shift (median over the examples; "
              f"V = {r['vocab_size']}, attacker alphabet `{r['attacker alphabet']}`).", "",
              "The certificate alone (no model) at the hybrid's median p_lower = "
              f"{r['radius ratio'][0]['p_lower']:.4f} (sigma = 0.5, beta = 0.25), for other "
              "thresholds and alphabet sizes:", ""]
    lines += _table(["tau", "alphabet size V", "r*(0)", "r*(1)", "r*(1) / r*(0)"],
                    [[f"{x['tau']:g}", f"{x['V']:,}", f"{x['r0']:.3f}", f"{x['r1']:.3f}",
                      _share_of(x["ratio"])] for x in r["radius ratio"]])
    lines += ["", "Mean r*(1) / mean r*(0) in the beta ablation below: "
              + ", ".join(f"{_share_of(v)} at beta = {b}" for b, v in f["ratio by beta"].items())
              + "."]

    # 2. beta, 3. sigma
    bkeys = ["certified share", "mean largest budget", "mean radius d=0", "mean radius d=1",
             "mean radius at largest budget", "mean p_lower"]
    betas = list(r["beta"])
    first, last = r["beta"][betas[0]], r["beta"][betas[-1]]
    lines += ["", "## Beta ablation (sigma = 0.5; one model trained per beta)", ""]
    lines += _table(["beta", *bkeys], [[str(b)] + [_cell(s[k], k) for k in bkeys]
                                       for b, s in r["beta"].items()])
    lines += ["", f"**Measured.** From beta = {betas[0]} to {betas[-1]}: "
              + _change("the mean largest text budget", first, last, "mean largest budget")
              + "; " + _change("the mean radius at d = 0", first, last, "mean radius d=0")
              + "; " + _change("the flagged share", first, last, "certified share", _pct)
              + ". `beta_ablation.png` draws the three."]
    sig = list(r["sigma"])
    lo, hi = r["sigma"][sig[0]], r["sigma"][sig[-1]]
    lines += ["", "## Sigma (beta = 0.25; one model trained per sigma)", ""]
    lines += _table(["sigma", *bkeys], [[str(x)] + [_cell(s[k], k) for k in bkeys]
                                        for x, s in r["sigma"].items()])
    lines += ["", f"**Measured.** From sigma = {sig[0]} to {sig[-1]}: "
              + "; ".join(_change(words, lo, hi, key) for words, key in (
                  ("the mean radius at d = 0", "mean radius d=0"),
                  ("the mean radius at d = 1", "mean radius d=1"),
                  ("the mean text budget", "mean largest budget"),
                  ("the mean p_lower", "mean p_lower"))) + "."]

    # 4. MMCert
    mkeys = ["certified share (no change)", "certified share, 1 token",
             "certified share, 1 pixel", "certified share, 1 token and 1 pixel", "mean p_lower",
             "model calls per example"]
    lines += ["", "## MMCert-style ablation on these interaction-only examples", "",
              "Each modality is sub-sampled independently (k tokens of 10, k pixels of 784 kept; "
              "the rest ablated) with a model trained on ablated inputs. Its threat model counts "
              "modified elements (tokens, pixels), not an L2 radius, so its columns are not "
              "comparable with the radii above. *certified share, e changes*: share of the "
              "examples whose decision is certified when e elements are modified.", ""]
    lines += _table(["keep (tokens, pixels)", "rule", *mkeys],
                    [[f"({m['k_text']}, {m['k_image']})", m["decision"]]
                     + [_cell(m[k], k) for k in mkeys] for m in r["mmcert"]])
    slack_both = 1 - ablation_delta(10, 5, 1) * ablation_delta(784, 200, 1)
    lines += ["", "**Measured.** Certified against one changed token and one changed pixel: "
              + "; ".join(f"{_pct(m['certified share, 1 token and 1 pixel'])} keeping "
                          f"({m['k_text']}, {m['k_image']}) under the {m['decision']} rule"
                          for m in r["mmcert"])
              + f". The slack 1 - delta is {1 - ablation_delta(10, 5, 1):.2f} for one token of "
              f"10 when 5 are kept, and {slack_both:.2f} with one pixel of 784 as well (200 "
              "kept)."]

    # 5. the attack
    attacks, summary = r["attack"], r["attack summary"]
    lines += ["", "## Joint attack against the hybrid certificate", "",
              f"A greedy token search plus L2 PGD attacked {len({a['example'] for a in attacks})} "
              f"examples at every (d, r) below ({len(attacks)} budgets in all). At each budget "
              "the table gives the lowest smoothed probability of the unsafe label the attack "
              "reached (estimated from n samples), the certified bound of that same example at "
              "the same (d, r) (the smallest probability the certificate allows, V_d(r); the "
              "attack cannot go below it), and the median over examples of the gap between "
              "the two. *certified*: examples whose bound clears tau there; *beaten*: certified "
              "budgets where the attack's upper confidence bound fell below tau.", ""]
    lines += _table(["d", "r", "certified / attacked", "lowest attack p(unsafe)",
                     "certified bound there", "median gap", "beaten"],
                    [[str(a["d"]), f"{a['r']:.2g}", f"{a['certified']} / {a['attacked']}",
                      f"{a['lowest p_attack']:.4f} (ex. {a['example']})",
                      f"{a['bound there']:.4f}", f"{a['median gap']:.3f}", str(a["beaten"])]
                     for a in summary])
    worst = max(summary, key=lambda a: a["median gap"])
    best = min(summary, key=lambda a: a["median gap"])
    by_d = {d: [a for a in summary if a["d"] == d] for d in sorted({a["d"] for a in summary})}
    lines += ["", f"**Measured.** Certified budgets beaten: {f['beaten']} of "
              f"{f['certified attacked budgets']}"
              + (" - a bug to chase!" if f["beaten"] else "")
              + f". Smallest median gap at d = {best['d']}, r = {best['r']:.2g} "
              f"({best['median gap']:.3f}); largest at d = {worst['d']}, r = "
              f"{worst['r']:.2g} ({worst['median gap']:.3f}). Median gaps by budget "
              "(at r = " + ", ".join(f"{a['r']:.2g}" for a in next(iter(by_d.values()))) + "): "
              + "; ".join(f"d = {d}: " + ", ".join(f"{a['median gap']:.3f}" for a in at)
                          for d, at in by_d.items())
              + ". A gap is an estimate from n samples against a bound at level alpha; an "
              "attack's gap bounds how tight the certificate is, never how loose.", "",
              "![attack versus certificate](attack_vs_certificate.png)", "",
              "![beta ablation](beta_ablation.png)", ""]
    (out / "paper.md").write_text("\n".join(lines))


def findings(r: dict) -> dict:
    """The numbers the report's sentences state, computed from the results (in ``paper.json``).

    A ratio is ``None`` when its denominator is 0.
    """
    hy, im, tx = r["methods"]["hybrid"], r["methods"]["image-only"], r["methods"]["text-only"]
    return {
        "hybrid r1 / image-only r0": _ratio(hy["mean radius d=1"], im["mean radius d=0"]),
        "hybrid budget / text-only budget": _ratio(hy["mean largest budget"],
                                                   tx["mean largest budget"]),
        "ratio by beta": {b: _ratio(s["mean radius d=1"], s["mean radius d=0"])
                          for b, s in r["beta"].items()},
        "beaten": int(sum(a["beaten"] for a in r["attack"])),
        "certified attacked budgets": int(sum(a["certified"] for a in r["attack"])),
    }


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _share_of(x: float | None) -> str:
    return "-" if x is None else _pct(x)


def _change(words: str, before: dict, after: dict, key: str, show=_num) -> str:
    """``"<words> grows from a to b"`` with the direction read off the numbers."""
    a, b = before[key], after[key]
    verb = "stays at" if a == b else "grows from" if b > a else "falls from"
    return f"{words} {verb} {show(a)}" + ("" if a == b else f" to {show(b)}")


def _plot(out: Path, r: dict, certs_by_method) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = r["attack"]
    budgets = sorted({a["d"] for a in attacks})
    examples = sorted({a["example"] for a in attacks})
    top = max(a["r"] for a in attacks) * 1.1 or 1.0
    fine = np.linspace(0, top, 60)
    colours = plt.cm.tab10(np.arange(len(examples)) % 10)
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 4.0), dpi=110,
                             sharey=True, squeeze=False)
    for ax, d in zip(axes[0], budgets):
        for colour, k in zip(colours, examples):
            cert = certs_by_method["hybrid"][k]
            ax.plot(fine, certified_bound(cert, d, fine), color=colour, lw=1.2, alpha=0.8)
            pts = [a for a in attacks if a["example"] == k and a["d"] == d]
            ax.plot([a["r"] for a in pts], [a["p_attack"] for a in pts], "o", color=colour,
                    ms=4)
            bad = [a for a in pts if a["beaten"]]
            ax.plot([a["r"] for a in bad], [a["p_attack"] for a in bad], "x", color="red",
                    ms=10, mew=2)
        ax.axhline(r["tau"], color="k", ls="--", lw=1)
        ax.text(top, r["tau"], f" tau = {r['tau']}", va="bottom", ha="right", fontsize=8)
        ax.set_title(f"d = {d} changed token{'s' if d != 1 else ''}", fontsize=10)
        ax.set_xlabel("L2 radius r of the image shift")
        ax.set_xlim(0, top)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("smoothed probability of 'unsafe'")
    from matplotlib.lines import Line2D

    fig.legend([Line2D([], [], color="0.3"), Line2D([], [], color="0.3", marker="o", ls="")],
               ["certified bound V_d(r) (the least the certificate allows)",
                "attack (lowest probability it found)"],
               loc="lower center", ncol=2, fontsize=8)
    fig.suptitle(f"joint attack against the certificate, {len(examples)} examples (one colour "
                 "each): the gap between a dot and its line is the certificate's slack",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out / "attack_vs_certificate.png")
    plt.close(fig)

    betas = list(r["beta"])
    xs = [float(b) for b in betas]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(12, 3.6), dpi=110)
    a1.plot(xs, [r["beta"][b]["certified share"] for b in betas], "o-")
    a1.set_ylim(0, 1.05)
    a1.set_ylabel("share flagged (d = 0, r = 0)")
    a1.set_title("coverage", fontsize=10)
    a2.plot(xs, [r["beta"][b]["mean largest budget"] for b in betas], "s-", color="C1")
    a2.set_ylim(bottom=0)
    a2.set_ylabel("mean largest certified budget d")
    a2.set_title("text budget gained", fontsize=10)
    for d, marker in ((0, "o-"), (1, "^-")):
        a3.plot(xs, [r["beta"][b][f"mean radius d={d}"] for b in betas], marker,
                label=f"mean r*({d})")
    a3.set_ylim(bottom=0)
    a3.set_ylabel("mean certified L2 radius")
    a3.set_title("image radius paid", fontsize=10)
    a3.legend(fontsize=8, loc="lower left")
    for ax in (a1, a2, a3):
        ax.set_xlabel("beta (token substitution probability)")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    fig.suptitle(f"beta ablation, sigma = 0.5, {r['examples']} unsafe examples", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "beta_ablation.png")
    plt.close(fig)
