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
import time
from pathlib import Path

import numpy as np

from .attacks import JointAttack
from .baselines import MMCertSmoother
from .datasets import load_dataset
from .models import demo
from .noise import UniformSubstitution
from .smoothing import ABSTAIN, SmoothedClassifier

TAU = 0.05


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
    say = print if progress else (lambda *a, **k: None)
    results: dict = {"examples": len(unsafe), "n": n, "alpha": alpha, "tau": TAU}

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
                "beaten": bool(certified and res.p_upper < TAU), "base_label": res.base_label})
    (out / "paper.json").write_text(json.dumps(results, indent=2, default=str))
    _write_markdown(out, results)
    _plot(out, results, certs_by_method)
    return out / "paper.md"


def _write_markdown(out: Path, r: dict) -> None:
    def row(name, s, keys):
        return f"| {name} | " + " | ".join(
            "-" if s[k] is None else (f"{s[k]:.1%}" if "share" in k else f"{s[k]:.4g}")
            for k in keys) + " |"

    keys = ["certified share", "mean radius d=0", "mean radius d=1", "mean largest budget",
            "model calls per example", "seconds per example"]
    lines = ["# The paper's comparisons on the bundled demo", "",
             f"{r['examples']} truly unsafe `mm-interaction` test examples; threshold rule "
             f"tau = {r['tau']}; n = {r['n']} samples per estimate; alpha = {r['alpha']}.", "",
             "## Hybrid versus unimodal smoothing (same base model, same model calls)", "",
             "| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [row(name, s, keys) for name, s in r["methods"].items()]
    hy, im, tx = r["methods"]["hybrid"], r["methods"]["image-only"], r["methods"]["text-only"]
    if im["mean radius d=0"]:
        lines += ["", f"Hybrid radius at d = 1 is {hy['mean radius d=1'] / im['mean radius d=0']:.1%}"
                  " of the image-only radius at d = 0; hybrid mean text budget is "
                  + (f"{hy['mean largest budget'] / tx['mean largest budget']:.1%}"
                     if tx["mean largest budget"] else "-") + " of text-only's."]
    bkeys = ["certified share", "mean largest budget", "mean radius at largest budget",
             "mean radius d=0"]
    lines += ["", "## Beta ablation (sigma = 0.5; one model per beta)", "",
              "| beta | " + " | ".join(bkeys) + " |", "|---|" + "---|" * len(bkeys)]
    lines += [row(b, s, bkeys) for b, s in r["beta"].items()]
    lines += ["", "## Sigma (beta = 0.25; one model per sigma)", "",
              "| sigma | " + " | ".join(bkeys) + " |", "|---|" + "---|" * len(bkeys)]
    lines += [row(s_, s, bkeys) for s_, s in r["sigma"].items()]
    mkeys = ["certified share (no change)", "certified share, 1 token",
             "certified share, 1 pixel", "certified share, 1 token and 1 pixel", "mean p_lower",
             "model calls per example"]
    lines += ["", "## MMCert-style ablation on these interaction-only examples", "",
              "Each modality is sub-sampled independently (k tokens of 10, k pixels of 784 kept; "
              "the rest ablated) with a model trained on ablated inputs. Its threat model counts "
              "modified elements (tokens, pixels), not an L2 radius.", "",
              "| keep (tokens, pixels) | rule | " + " | ".join(mkeys) + " |",
              "|---|---|" + "---|" * len(mkeys)]
    for m in r["mmcert"]:
        lines.append(f"| ({m['k_text']}, {m['k_image']}) | {m['decision']} | " + " | ".join(
            f"{m[k]:.1%}" if "share" in k else f"{m[k]:.4g}" for k in mkeys) + " |")
    attacks = r["attack"]
    beaten = [a for a in attacks if a["beaten"]]
    lines += ["", "## Joint attack against the hybrid certificate", "",
              f"{len(attacks)} (example, d, r) budgets attacked; certified ones: "
              f"{sum(a['certified'] for a in attacks)}; beaten certified budgets: {len(beaten)}"
              + (" (a bug to chase!)" if beaten else "."), "",
              "| example | d | r | certified radius r*(d) | certified | attack p_A(x') | upper bound |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {a['example']} | {a['d']} | {a['r']:.2f} | {a['certified radius']:.3f} | "
              f"{'yes' if a['certified'] else 'no'} | {a['p_attack']:.4f} | {a['p_upper']:.4f} |"
              for a in attacks]
    lines += ["", "![attack versus certificate](attack_vs_certificate.png)", "",
              "![beta ablation](beta_ablation.png)", ""]
    (out / "paper.md").write_text("\n".join(lines))


def _plot(out: Path, r: dict, certs_by_method) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = r["attack"]
    examples = sorted({a["example"] for a in attacks})
    cols = min(4, len(examples)) or 1
    rows = int(np.ceil(len(examples) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), dpi=110, squeeze=False)
    for ax, k in zip(axes.ravel(), examples):
        cert = certs_by_method["hybrid"][k]
        ds = np.arange(len(cert.radii))
        ax.step(ds, cert.radii, where="mid", color="C0", lw=2, label="certified r*(d)")
        pts = [a for a in attacks if a["example"] == k]
        broken = [a for a in pts if a["p_upper"] < r["tau"]]
        held = [a for a in pts if a["p_upper"] >= r["tau"]]
        ax.scatter([a["d"] for a in held], [a["r"] for a in held], marker="o", color="C2",
                   s=18, label="attack fails")
        ax.scatter([a["d"] for a in broken], [a["r"] for a in broken], marker="x", color="C3",
                   s=30, label="attack succeeds")
        ax.set_title(f"example {k}", fontsize=9)
        ax.set_xlabel("discrete budget d")
        ax.set_ylabel("L2 radius r")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(examples):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("certified frontier vs joint attack (x inside the blue frontier = a bug)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "attack_vs_certificate.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    betas = list(r["beta"])
    ax.plot(betas, [r["beta"][b]["certified share"] for b in betas], "o-",
            label="certified share (d = 0)")
    ax2 = ax.twinx()
    ax2.plot(betas, [r["beta"][b]["mean largest budget"] for b in betas], "s--", color="C1",
             label="mean largest budget")
    ax.set_xlabel("beta (substitution probability)")
    ax.set_ylabel("certified share")
    ax2.set_ylabel("mean largest certified budget d")
    ax.set_ylim(0, 1.05)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="lower left")
    ax.set_title("beta trades coverage for budget")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "beta_ablation.png")
    plt.close(fig)
