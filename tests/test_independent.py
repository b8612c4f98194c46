"""The interpretability metrics recomputed from the SAELens export with no project code: numpy, safetensors and
scikit-learn only, from the definitions in the README. This is the check another implementation would run."""
import json

import numpy as np
import pytest

pytestmark = pytest.mark.e2e  # real DVC on the shared tiny project: `make test-fast` leaves these out
from safetensors.numpy import load_file

Z = 1.959964


def wilson(k, n):
    p = k / n
    den = 1 + Z * Z / n
    c = (p + Z * Z / (2 * n)) / den
    h = Z * np.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / den
    return max(c - h, 0.0), min(c + h, 1.0)


@pytest.mark.parametrize("site,model,hook", [("mlp-hidden", "mlp", "hidden"), ("vit-block1", "vit", "block1")])
def test_metrics_reproduce_from_the_export(tiny_project, site, model, hook):
    dest, _ = tiny_project
    w = load_file(str(dest / f"data/sae/{site}/saelens/sae_weights.safetensors"))
    acts, data = np.load(dest / f"data/activations/{model}/acts.npz"), np.load(dest / "data/prepared/mnist.npz")
    interp = json.loads((dest / f"metrics/sites/{site}/interpretability.json").read_text())
    table = {r["latent"]: r for r in json.loads((dest / f"data/analysis/{site}/latents.json").read_text())["latents"]}
    min_count, high = interp["min_count"], interp["high_purity"]

    def encode(h):
        pre = h.astype(np.float64) @ w["W_enc"].astype(np.float64) + w["b_enc"]
        return pre * (pre > w["threshold"])

    f = {s: encode(acts[f"{hook}_{s}"]) for s in ("train", "test")}
    y = {s: data[f"y_{s}"] for s in ("train", "test")}
    fires = f["test"] > 0
    counts = np.stack([fires[y["test"] == c].sum(0) for c in range(10)], axis=1)  # [U, 10]
    n = counts.sum(1)
    purity = counts.max(1) / np.maximum(n, 1)
    counted = n >= min_count
    pure = counted & (purity >= high)
    sae = interp["sae"]
    # float64 here vs float32 in the pipeline can flip a firing right at a threshold: allow a hair of slack
    assert sae["n_counted"] == counted.sum()
    assert abs(sae["purity_mean"] - purity[counted].mean()) < 1e-3
    assert abs(sae["purity_median"] - np.median(purity[counted])) < 1e-3
    assert sae["n_high_purity"] == pure.sum()
    assert sae["classes_covered"] == sorted(set(counts.argmax(1)[pure].tolist()))
    assert abs(sae["inputs_covered"] - fires[:, pure].any(1).mean()) < 1e-3
    # purity of the top-100 activations
    tops = []
    for u in np.flatnonzero(counted):
        idx = np.argsort(-f["test"][:, u], kind="stable")[:min(100, n[u])]
        tops.append(np.bincount(y["test"][idx], minlength=10).max() / len(idx))
    assert abs(sae["top100_purity_mean"] - np.mean(tops)) < 1e-3
    # the per-latent table: counts, purity and its Wilson interval
    for u in np.flatnonzero(n):
        r = table[int(u)]
        assert r["n_test"] == n[u] and r["label_hist"] == counts[u].tolist()
        lo, hi = wilson(counts[u].max(), n[u])
        assert abs(r["purity_lo"] - lo) < 1e-5 and abs(r["purity_hi"] - hi) < 1e-5
        if r["hypothesis_classes"]:  # held-out precision of "fires => digit in the set"
            prec = counts[u, r["hypothesis_classes"]].sum() / n[u]
            assert abs(r["heldout_precision"] - prec) < 1e-5
    # sparse probing with scikit-learn: top-k by |mean difference| on train, standardised, balanced L2 logistic
    linear_model = pytest.importorskip("sklearn.linear_model")
    for k in (1, 2):
        bal = []
        for c in range(10):
            t_tr, t_te = y["train"] == c, y["test"] == c
            diff = np.abs(f["train"][t_tr].mean(0) - f["train"][~t_tr].mean(0))
            cols = np.argsort(-diff, kind="stable")[:k]
            xtr, xte = f["train"][:, cols], f["test"][:, cols]
            mu, sd = xtr.mean(0), xtr.std(0, ddof=1)
            sd[sd == 0] = 1
            clf = linear_model.LogisticRegression(C=1.0, class_weight="balanced", tol=1e-8, max_iter=10000)
            pred = clf.fit((xtr - mu) / sd, t_tr).predict((xte - mu) / sd).astype(bool)
            bal.append(0.5 * ((pred & t_te).sum() / t_te.sum() + (~pred & ~t_te).sum() / (~t_te).sum()))
        assert abs(sae["probe"][str(k)]["balanced_accuracy"] - np.mean(bal)) < 2e-3, k


def test_universality_matching_reproduces_from_the_exports(tiny_project):
    """The Hungarian mean correlation between the two sites' SAE latents on the test images, from the SAELens
    exports and the base models' activations, with numpy and scipy only (metrics/universality.json, within 0.01)."""
    from scipy.optimize import linear_sum_assignment

    dest, _ = tiny_project
    data = np.load(dest / "data/prepared/mnist.npz")
    codes = []
    for site, model, hook in (("mlp-hidden", "mlp", "hidden"), ("vit-block1", "vit", "block1")):
        w = load_file(str(dest / f"data/sae/{site}/saelens/sae_weights.safetensors"))
        h = np.load(dest / f"data/activations/{model}/acts.npz")[f"{hook}_test"].astype(np.float64)
        pre = h @ w["W_enc"].astype(np.float64) + w["b_enc"]
        codes.append(pre * (pre > w["threshold"]))
    assert len(codes[0]) == len(data["y_test"])
    a, b = codes
    a, b = a[:, a.std(0) > 0], b[:, b.std(0) > 0]  # latents that never fire are left out
    corr = np.corrcoef(a.T, b.T)[:a.shape[1], a.shape[1]:]
    r, c = linear_sum_assignment(-corr)
    got = json.loads((dest / "metrics/universality.json").read_text())["pairs"]["mlp-hidden~vit-block1"]["sae"]
    assert abs(got["hungarian_mean"] - corr[r, c].mean()) < 0.01
    assert got["n_a"] == a.shape[1] and got["n_b"] == b.shape[1]


@pytest.mark.parametrize("site,model,hook", [("mlp-hidden", "mlp", "hidden"), ("vit-block1", "vit", "block1")])
def test_absorption_reproduces_from_the_export(tiny_project, site, model, hook):
    """Best-latent recall, main latents and the full absorption rate from the README's definitions, with numpy and
    scikit-learn (its own dense probe) on the SAELens export and the activations."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    dest, _ = tiny_project
    w = load_file(str(dest / f"data/sae/{site}/saelens/sae_weights.safetensors"))
    acts, data = np.load(dest / f"data/activations/{model}/acts.npz"), np.load(dest / "data/prepared/mnist.npz")
    interp = json.loads((dest / f"metrics/sites/{site}/interpretability.json").read_text())
    got = interp["sae"]["absorption"]
    h = {s: acts[f"{hook}_{s}"].astype(np.float64) for s in ("train", "test")}
    y = {s: data[f"y_{s}"] for s in ("train", "test")}
    f = {}
    for s in ("train", "test"):
        pre = h[s] @ w["W_enc"].astype(np.float64) + w["b_enc"]
        f[s] = pre * (pre > w["threshold"])
    fires = {s: f[s] > 0 for s in f}
    eligible = fires["train"].sum(0) >= interp["min_count"]
    mu, sd = h["train"].mean(0), h["train"].std(0, ddof=1)
    sd[sd == 0] = 1
    d_hat = w["W_dec"] / np.maximum(np.linalg.norm(w["W_dec"], axis=1, keepdims=True), 1e-12)
    recalls, rates = [], []
    for c in range(10):
        pos_tr, pos_te = y["train"] == c, y["test"] == c
        tp = (fires["train"] & pos_tr[:, None]).sum(0)
        f1 = np.where(eligible, 2 * tp / (pos_tr.sum() + fires["train"].sum(0)), -1)
        best = int(np.argmax(f1))
        recalls.append((fires["test"][:, best] & pos_te).sum() / pos_te.sum())
        # main latents: greedy F1 of the union, while one more adds >= 0.03
        main, union, score = [], np.zeros(len(pos_tr), bool), 0.0
        while len(main) < 10:
            new = union[:, None] | fires["train"]
            tpu, fpu = (new & pos_tr[:, None]).sum(0), (new & ~pos_tr[:, None]).sum(0)
            cand = np.where(eligible, 2 * tpu / (pos_tr.sum() + tpu + fpu), -1.0)
            cand[main] = -1
            u = int(np.argmax(cand))
            if cand[u] - score < (0.03 if main else 1e-12):
                break
            main.append(u)
            score, union = cand[u], union | fires["train"][:, u]
        # the dense probe, in the site's coordinates
        clf = linear_model.LogisticRegression(C=1.0, class_weight="balanced", tol=1e-8, max_iter=10000)
        clf.fit((h["train"] - mu) / sd, pos_tr)
        p = clf.coef_[0] / sd
        seen = pos_te & (clf.decision_function((h["test"] - mu) / sd) > 0)
        contrib = f["test"][seen] * (w["W_dec"].astype(np.float64) @ p)
        aligned = d_hat @ (p / np.linalg.norm(p)) >= 0.1
        aligned[main] = False
        total = np.clip(contrib, 0, None).sum(1, keepdims=True)
        absorber = (contrib > 0) & aligned & (contrib >= 0.5 * total)
        silent = ~fires["test"][seen][:, main].any(1)
        rates.append((silent & absorber.any(1)).sum() / max(seen.sum(), 1))
    assert abs(got["best_latent_recall_mean"] - np.mean(recalls)) < 0.01
    assert abs(got["absorption_rate_mean"] - np.mean(rates)) < 0.02
