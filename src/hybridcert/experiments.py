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

Tables go to ``paper.md``, figures to PNG, the raw numbers to ``paper.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from .attacks import JointAttack
from .baselines import MMCertSmoother, ablation_delta
from .certificate.hybrid import certified_radius, worst_case_probability
from .datasets import load_dataset
from .models import demo
from .noise import UniformSubstitution, attack_atoms
from .record import Certificate
from .sampling import ABSTAIN
from .smoothing import SmoothedClassifier

logger = logging.getLogger(__name__)

TAU = 0.05
PAPER_TAU = 4.6e-5  # the paper's threshold, for a guard that is almost never wrong


def paper_experiment(out: str | Path, *, n_examples: int = 40, n: int = 2000, n0: int = 50,
                     alpha: float = 0.001, attack_examples: int = 8, seed: int = 0,
                     cache=None, progress: bool = True) -> Path:
    """Run every comparison and write ``paper.md``, ``paper.json`` and figures into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("mm-interaction", seed=seed)
    unsafe = np.flatnonzero(data.test.y == 1)[:n_examples]
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
    for k in range(min(attack_examples, len(tokens))):
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
            out.append({"p_lower": p_lower, "tau": tau, "V": vocab, "r0": r0, "r1": r1})
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


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cells) + " |" for cells in body]


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
    "seconds per example": "wall time; it depends on the machine and its load (two identical "
                           "runs have differed up to fourfold), so compare only within a run",
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

    # 1. hybrid versus unimodal
    ratio = hy["mean radius d=1"] / im["mean radius d=0"] if im["mean radius d=0"] else None
    budget = (hy["mean largest budget"] / tx["mean largest budget"]
              if tx["mean largest budget"] else None)
    lines += ["", "## Hybrid versus unimodal smoothing (same base model, same model calls)", ""]
    lines += _table(["method", *keys], [[name] + [_cell(s[k], k) for k in keys]
                                        for name, s in r["methods"].items()])
    beta_ratios = {b: s["mean radius d=1"] / s["mean radius d=0"]
                   for b, s in r["beta"].items() if s["mean radius d=0"]}
    ratio_rows = r["radius ratio"]
    lines += ["", "**Finding.** Only hybrid smoothing certifies a joint budget (a changed token "
              "and an image shift at once). Its price is larger than the paper suggests. "
              "The paper expects the hybrid image radius at d = 1 to sit a few percent below "
              "image-only's radius at d = 0, and its text budget a few percent below "
              "text-only's. Here the hybrid radius at d = 1 is "
              + (f"{hy['mean radius d=1']:.3f}, {_pct(ratio)} of image-only's "
                 f"{im['mean radius d=0']:.3f}" if ratio is not None else "-")
              + ", and its mean text budget is "
              + (f"{hy['mean largest budget']:.3f} tokens, {_pct(budget)} of text-only's "
                 f"{tx['mean largest budget']:.3f}" if budget is not None else "-")
              + " (text-only certifies the larger text budget).", "",
              "**Why.** Two things, and the alphabet's size is not one of them. First, the token "
              "noise "
              "makes the model less sure: the hybrid's mean p_lower is "
              f"{hy['mean p_lower']:.3f} against image-only's {im['mean p_lower']:.3f}, so even "
              f"its radius at d = 0 ({hy['mean radius d=0']:.3f}) is below image-only's. Second, "
              "and larger: under uniform substitution a changed token survives the noise with "
              "probability about 1 - beta, and the certificate must assume the model fails "
              "whenever it does. So at d = 1 it gives up about that much probability before "
              f"any image shift: p_lower - V_1(0) = {r['d=1 cost at r=0']:.3f} here (median "
              f"over the examples; V = {r['vocab_size']}, attacker alphabet "
              f"`{r['attacker alphabet']}`; in the attack table the bound at d = 1, r = 0 is "
              "p_lower minus that). The image radius at d = 1 is what takes the rest down to "
              f"tau, and with tau = {r['tau']} little is left. The certificate alone, at the "
              f"hybrid's median p_lower = {ratio_rows[0]['p_lower']:.4f} (sigma = 0.5, beta = "
              "0.25), shows that "
              "tau matters and the alphabet little (a 32,000-token vocabulary makes the ratio "
              "slightly lower, not higher):", ""]
    lines += _table(["tau", "alphabet size V", "r*(0)", "r*(1)", "r*(1) / r*(0)"],
                    [[f"{x['tau']:g}", f"{x['V']:,}", f"{x['r0']:.3f}", f"{x['r1']:.3f}",
                      _pct(x['r1'] / x['r0'])] for x in ratio_rows])
    lines += ["", "At the paper's tau = 4.6e-5 the ratio comes closer to its claim, though still "
              "not within a few percent. (This demo cannot run at that tau: its model misreads "
              "a few percent of noisy inputs, so it would flag every input.) Beta matters too: "
              "the ratio rises with beta ("
              + ", ".join(f"{_pct(v)} at beta = {b}" for b, v in beta_ratios.items())
              + ", from the beta ablation below), at the cost of image radius at d = 0. The "
              "text budget is below text-only's for the first reason: text-only's p_lower is "
              f"{tx['mean p_lower']:.3f} with a clean image, and a budget of d tokens needs "
              "p_lower above the probability those tokens can reveal."]

    # 2. beta, 3. sigma
    bkeys = ["certified share", "mean largest budget", "mean radius d=0", "mean radius d=1",
             "mean radius at largest budget", "mean p_lower"]
    betas = list(r["beta"])
    first, last = r["beta"][betas[0]], r["beta"][betas[-1]]
    lines += ["", "## Beta ablation (sigma = 0.5; one model trained per beta)", ""]
    lines += _table(["beta", *bkeys], [[str(b)] + [_cell(s[k], k) for k in bkeys]
                                       for b, s in r["beta"].items()])
    lines += ["", f"**Finding.** More token noise buys text budget and costs image radius. From "
              f"beta = {betas[0]} to {betas[-1]} the mean largest text budget grows from "
              f"{first['mean largest budget']:.3f} to {last['mean largest budget']:.3f} tokens, "
              f"while the mean radius at d = 0 falls from {first['mean radius d=0']:.3f} to "
              f"{last['mean radius d=0']:.3f} and the flagged share from "
              f"{_pct(first['certified share'])} to {_pct(last['certified share'])}. "
              "`beta_ablation.png` draws the three."]
    sig = list(r["sigma"])
    lo, hi = r["sigma"][sig[0]], r["sigma"][sig[-1]]
    lines += ["", "## Sigma (beta = 0.25; one model trained per sigma)", ""]
    lines += _table(["sigma", *bkeys], [[str(x)] + [_cell(s[k], k) for k in bkeys]
                                        for x, s in r["sigma"].items()])
    lines += ["", f"**Finding.** Doubling sigma from {sig[0]} to {sig[-1]} raises the mean radius "
              f"at d = 0 from {lo['mean radius d=0']:.3f} to {hi['mean radius d=0']:.3f} and at "
              f"d = 1 from {lo['mean radius d=1']:.3f} to {hi['mean radius d=1']:.3f}, while the "
              f"mean text budget falls from {lo['mean largest budget']:.3f} to "
              f"{hi['mean largest budget']:.3f} tokens: the noisier model is less confident "
              f"(mean p_lower {lo['mean p_lower']:.3f} against {hi['mean p_lower']:.3f}), and "
              "the text budget at radius 0 depends on that bound alone."]

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
    maj = [m for m in r["mmcert"] if m["decision"] == "majority"]
    slack_both = 1 - ablation_delta(10, 5, 1) * ablation_delta(784, 200, 1)
    thr = [m for m in r["mmcert"] if m["decision"] == "threshold"]
    if maj and thr:
        lines += ["", "**Finding.** The paper says MMCert certifies little or nothing on data "
                  "whose label needs both modalities. That holds under the majority rule: "
                  + "; ".join(f"keeping ({m['k_text']}, {m['k_image']}) it certifies "
                              f"{_pct(m['certified share, 1 token'])} against one changed token"
                              for m in maj)
                  + ". It does not hold under this low-tau threshold rule, which certifies "
                  + "; ".join(f"{_pct(m['certified share, 1 token and 1 pixel'])} against one "
                              f"token and one pixel keeping ({m['k_text']}, {m['k_image']})"
                              for m in thr)
                  + f": the slack 1 - delta is {1 - ablation_delta(10, 5, 1):.2f} for one token "
                  f"of 10 when 5 are kept, {slack_both:.2f} with one pixel of 784 as well (200 "
                  f"kept), and p_lower - slack stays above tau = {r['tau']}. Those claims count "
                  "modified pixels, not an L2 shift of the whole image."]

    # 5. the attack
    attacks, summary = r["attack"], r["attack summary"]
    beaten = sum(a["beaten"] for a in attacks)
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
    lines += ["", f"**Finding.** No certified budget is beaten ({beaten} of "
              f"{sum(a['certified'] for a in attacks)})"
              + (" - a bug to chase!" if beaten else "")
              + f". The certificate is tightest at d = {best['d']}, r = {best['r']:.2g} "
              f"(median gap {best['median gap']:.3f}) and loosest at d = {worst['d']}, r = "
              f"{worst['r']:.2g} (median gap {worst['median gap']:.3f}). Median gaps by budget "
              "(at r = " + ", ".join(f"{a['r']:.2g}" for a in next(iter(by_d.values()))) + "): "
              + "; ".join(f"d = {d}: " + ", ".join(f"{a['median gap']:.3f}" for a in at)
                          for d, at in by_d.items())
              + ". With no token changed and a small shift the attack comes close to the bound; "
              "once a token is changed it leaves the probability far above what the "
              "certificate guarantees. Either the attack is weak there or the worst case the "
              "certificate guards against (a model that fails exactly when the changed token "
              "survives the noise) is not what this model does; an attack cannot tell which. "
              "The gaps compare estimates from n samples with bounds at level alpha.", "",
              "![attack versus certificate](attack_vs_certificate.png)", "",
              "![beta ablation](beta_ablation.png)", ""]
    (out / "paper.md").write_text("\n".join(lines))


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
