"""Baselines (MMCert-style ablation, unimodal smoothing) and the joint attack."""

import itertools
import json
import math

import numpy as np
import pytest

import hybridcert as hc
from hybridcert.baselines import MMCertSmoother, ablation_delta
from hybridcert.cli import main

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("n,k", [(6, 2), (7, 3), (10, 5)])
def test_ablation_delta_matches_enumeration(n, k):
    for e in range(n + 1):
        modified = set(range(e))
        subsets = list(itertools.combinations(range(n), k))
        exact = sum(not modified & set(s) for s in subsets) / len(subsets)
        got = ablation_delta(n, k, e)
        assert got <= exact and got == pytest.approx(exact, rel=1e-15, abs=1e-300)
    assert ablation_delta(784, 200, 1) == pytest.approx(584 / 784)
    with pytest.raises(ValueError, match="0 <= k, e <= n"):
        ablation_delta(5, 6, 0)


def test_mmcert_sub_sampling_and_certificate():
    seen = {}

    def model(tokens, images):  # unsafe iff token 7 survived the ablation
        seen["kept"] = (tokens != 99).sum(axis=1), (images != 0).reshape(len(images), -1).sum(1)
        return (tokens == 7).any(axis=1).astype(int)

    tokens = np.array([7, 7, 7, 7, 1, 2, 3, 4, 5, 6])
    image = np.full((4, 4), 0.5, np.float32)
    smooth = MMCertSmoother(model, k_text=4, k_image=5, mask_id=99, decision="threshold", tau=0.05,
                            batch_size=500)
    cert = smooth.certify(tokens, image, n=2000, alpha=0.001, e_text=[0, 1, 2], e_image=[0, 1],
                          random_state=0)
    assert (seen["kept"][0] == 4).all() and (seen["kept"][1] == 5).all()
    truth = 1 - math.comb(6, 4) / math.comb(10, 4)  # P(at least one 7 kept)
    assert cert.p_lower <= truth
    for (et, ei), ok in cert.certified.items():
        exact = 1 - ablation_delta(10, 4, et) * ablation_delta(16, 5, ei)
        # Never certified where the exact slack says no; the safe rounding moves it by ulps only.
        assert not ok or cert.p_lower - exact >= 0.05
        assert ok == (cert.p_lower - exact >= 0.05 + 1e-12) or abs(cert.p_lower - exact - 0.05) < 1e-12
    assert cert.largest_text == max(et for et in (0, 1, 2) if cert.certified[et, 0])


@pytest.mark.slow
def test_unimodal_baselines_from_the_cli(tmp_path):
    for baseline in ("image-only", "text-only"):
        out = tmp_path / baseline
        budget = ["--d-max", "2"] if baseline == "text-only" else []  # image-only: only d = 0
        assert main(["certify", "--baseline", baseline, "--n", "300", "--n0", "20", "--limit", "4",
                     *budget, "--out", str(out), "--no-progress", "--no-report"]) == 0
        rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        settings = json.loads((out / "run.json").read_text())
        assert len(rows) == 4
        # a baseline is the smoothing it leaves out: no Gaussian noise, or no token noise
        assert (settings["sigma"] is None) == (baseline == "text-only")
        assert (settings["kernel"] is None) == (baseline == "image-only")
        if baseline == "text-only":  # certified budgets hold at radius 0 only
            assert all(r == 0.0 for row in rows for r in row["radius"])
        else:  # no discrete noise: only d = 0 is certified
            assert all(len(row["radius"]) == 1 for row in rows)


class OneToken(torch.nn.Module):
    """Unsafe iff token 3 is present and the image is bright enough: either move flips it."""

    def forward(self, tokens, images):
        present = (tokens == 3).any(dim=1).float()
        score = 3 * present + 10 * (images.flatten(1).mean(1) - 0.45) - 2
        return torch.stack([-score, score], dim=1)


def test_joint_attack_finds_the_obvious_moves_and_respects_the_budget():
    from hybridcert.attacks import JointAttack
    from hybridcert.models import TorchClassifier
    from hybridcert.noise import UniformSubstitution

    kernel = UniformSubstitution(beta=0.05, vocab_size=6)
    tokens = np.array([3, 1, 2, 0])
    image = np.full((4, 4), 0.5, np.float32)
    smoothed = hc.SmoothedClassifier(TorchClassifier(OneToken()), discrete_noise=kernel, sigma=0.1,
                                     decision="threshold", tau=0.05, random_state=0)
    for differentiable in (True, False):
        attack = JointAttack(smoothed, OneToken(), eot_samples=16, pgd_steps=15,
                             differentiable=differentiable, random_state=0)
        results = {(r.d, r.radius): r for r in attack.run(tokens, image, budgets=[0, 1],
                                                          radii=[0.0, 2.0], n_eval=400)}
        assert results[0, 0.0].p_estimate > 0.9  # clean input: unsafe
        assert 3 not in results[1, 0.0].tokens  # the one token that matters was replaced
        assert np.sum(results[1, 0.0].tokens != tokens) == 1  # and only one position changed
        assert results[1, 0.0].p_estimate < 0.2
        moved = results[0, 2.0].image - image
        assert np.linalg.norm(moved) <= 2.0 + 1e-5  # L2 budget respected
        assert results[0, 2.0].p_estimate < 0.2  # darkening by L2 norm 2 flips it too


@pytest.mark.slow
def test_paper_experiment_writes_tables_and_no_certificate_is_beaten(tmp_path):
    from hybridcert.experiments.paper import paper_experiment

    path = paper_experiment(tmp_path, n_examples=4, n=300, n0=20, attack_examples=1,
                            progress=False)
    text = path.read_text()
    for heading in ("Hybrid versus unimodal", "Beta ablation", "Sigma", "MMCert-style",
                    "Joint attack"):
        assert heading in text
    results = json.loads((tmp_path / "paper.json").read_text())
    assert set(results["methods"]) == {"hybrid", "image-only", "text-only"}
    assert [float(b) for b in results["beta"]] == [0.1, 0.25, 0.5, 1.0]
    assert results["attack"] and not any(a["beaten"] for a in results["attack"])
    # The attack summarised per budget: its lowest probability next to the certified bound of the
    # same example at the same (d, r); the raw rows stay in paper.json.
    summary = results["attack summary"]
    assert len(summary) == len({(a["d"], a["r"]) for a in results["attack"]})
    for row in summary:
        at = [a for a in results["attack"] if (a["d"], a["r"]) == (row["d"], row["r"])]
        low = min(at, key=lambda a: a["p_attack"])
        assert (row["lowest p_attack"], row["bound there"]) == \
            (low["p_attack"], low["certified bound"])
    for a in results["attack"]:
        assert 0.0 <= a["certified bound"] <= 1.0
        if a["certified"]:  # inside the certified frontier the bound clears tau
            assert a["certified bound"] >= results["tau"]
    # A results section: column definitions, and per comparison the numbers of this run.
    assert "Columns:" in text and "*certified share*:" in text
    assert "depends on the machine and its load" in text
    hy, im = results["methods"]["hybrid"], results["methods"]["image-only"]
    found = results["findings"]
    ratio = hy["mean radius d=1"] / im["mean radius d=0"] if im["mean radius d=0"] else None
    assert found["hybrid r1 / image-only r0"] == ratio
    if ratio is not None:
        assert f"{ratio:.1%} of image-only's mean radius at d = 0" in text
    assert found["beaten"] == sum(a["beaten"] for a in results["attack"]) == 0
    assert found["certified attacked budgets"] == sum(a["certified"] for a in results["attack"])
    assert (f"Certified budgets beaten: 0 of {found['certified attacked budgets']}." in text)
    first, last = results["beta"]["0.1"], results["beta"]["1.0"]
    verb = ("grows from" if last["mean largest budget"] > first["mean largest budget"] else
            "falls from" if last["mean largest budget"] < first["mean largest budget"] else "stays at")
    assert f"the mean largest text budget {verb} {first['mean largest budget']:.3f}" in text
    assert "raw" in text.lower() and "| d | r |" in text
    for png in ("attack_vs_certificate.png", "beta_ablation.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
