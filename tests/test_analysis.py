"""The analysis on planted truth: a synthetic base model, SAE and data with known pure, mixed, rare and dense
latents, where every statistic, hypothesis and causal effect has a known answer."""
import numpy as np
import pytest
import torch

from sae_pipeline.analysis import hypotheses, select
from sae_pipeline.analysis.families import top_purity
from sae_pipeline.analysis.probing import fit_logistic, mean_diff_ranking, probe, sparse_probing
from sae_pipeline.analysis.run import analyze_sae
from sae_pipeline.analysis.stats import LabelStats, wilson
from sae_pipeline.analysis.units import neuron_units, pca_units, random_units
from sae_pipeline.zoo import MLP, Site
from sae_pipeline.config import AnalysisConfig
from sae_pipeline.sae import SAE

CARD = {"input_mean": 0.0, "input_std": 1.0}
N = {"train": 6000, "val": 2000, "test": 4000}
# latent -> (pixel it reads, what the pixel's firing depends on)
PURE, MIXED, DENSE, RARE, MOSTLY = 0, 1, 2, 3, 4
PLANTED_SETS = {PURE: [3], MIXED: [4, 9], RARE: [7], MOSTLY: [1, 2]}


def _split(n, g):
    y = torch.randint(0, 10, (n,), generator=g)
    u = torch.rand(n, 5, generator=g)
    lit = torch.stack([
        y == 3,                                              # PURE: every 3, nothing else
        (y == 4) | (y == 9),                                 # MIXED: 4s and 9s
        u[:, 2] < 0.5,                                       # DENSE: half of all inputs, any digit
        (y == 7) & (u[:, 3] < 0.2),                          # RARE: a fifth of the 7s
        ((y == 1) & (u[:, 4] < 0.75)) | ((y == 2) & (u[:, 4] < 0.25)),  # MOSTLY: 75% of 1s, 25% of 2s
    ], dim=1)
    pixels = torch.zeros(n, 28, 28, dtype=torch.uint8)
    # a lit pixel's intensity varies (200..255), so activations have a range with a known order
    pixels[:, 0, :5] = lit.to(torch.uint8) * torch.randint(200, 256, (n, 5), generator=g, dtype=torch.uint8)
    pixels[:, 10:20, 10:20] = torch.randint(0, 30, (n, 10, 10), generator=g, dtype=torch.uint8)
    return pixels, y


def planted_world(seed=0):
    """hidden unit i = pixel (0, i)/255 for i < 5; SAE latent i reads hidden unit i, f_i = 2·h_i - 1 where that
    is above θ = 0.5, i.e. wherever the pixel is lit (8 latents: 5 planted, 3 dead).
    fc2 sends hidden unit i to logit (i + 5) mod 10, so each latent's causal effect has a known top class."""
    g = torch.Generator().manual_seed(seed)
    splits = {s: _split(n, g) for s, n in N.items()}
    model = MLP("relu", hidden_dim=6)
    sae = SAE(6, 8, "jumprelu", generator=g)
    with torch.no_grad():
        model.fc1.weight.zero_(); model.fc1.bias.zero_()
        for i in range(5):
            model.fc1.weight[i, i] = 1.0  # x = pixels/255 with CARD -> h_i = 1 when lit
        model.fc2.weight.zero_(); model.fc2.bias.zero_()
        for i in range(5):
            model.fc2.weight[(i + 5) % 10, i] = 2.0
        sae.W_enc.zero_(); sae.b_enc.fill_(-1.0); sae.W_dec.zero_(); sae.b_dec.zero_()
        sae.threshold.fill_(0.5)
        for i in range(5):
            sae.W_enc[i, i] = 2.0
            sae.W_dec[i, i] = 1.0
    h = {s: model.hidden(p.reshape(len(p), -1).float() / 255).detach() for s, (p, _) in splits.items()}
    y = {s: yy for s, (_, yy) in splits.items()}
    return sae, model, h, y, splits["test"][0]


@pytest.fixture(scope="module")
def world():
    sae, model, h, y, pixels = planted_world()
    cfg = AnalysisConfig(n_features=3, top_k=8, n_intervention=64, min_count=20)
    res = analyze_sae(sae, Site(model, "hidden"), CARD, h, y, pixels, cfg, seed=0)
    return res, cfg, y


def test_every_latent_is_in_the_table_dead_ones_flagged(world):
    res, _, _ = world
    assert [r["latent"] for r in res.latents] == list(range(8))
    assert [r["dead"] for r in res.latents] == [False] * 5 + [True] * 3
    assert res.latents[DENSE]["dense"] and not res.latents[RARE]["dense"]


def test_default_selection_surfaces_the_pure_latents_not_the_dense_one(world):
    res, cfg, _ = world
    assert cfg.select == "per_class"
    assert DENSE not in res.selected and set(res.selected) <= {PURE, RARE, MOSTLY, MIXED}
    assert PURE in res.selected
    # the old rule shows the dense latent first
    st = LabelStats.of(res_fires(res, "train"), world[2]["train"])
    assert select.rank("frequency", st, cfg.min_count)[0] == DENSE


def res_fires(res, split):
    """Rebuild the train firing matrix from the planted rule (the test only needs n and labels)."""
    sae, model, h, y, _ = planted_world()
    return sae.encode(h[split]) > 0


def test_label_statistics_and_intervals(world):
    res, _, y = world
    pure, mixed = res.latents[PURE], res.latents[MIXED]
    n3 = int((y["test"] == 3).sum())
    assert pure["n_test"] == n3 and pure["mode_label"] == 3 and pure["purity"] == 1.0
    assert pure["purity_lo"] < 1.0 and pure["purity_hi"] == 1.0  # n of n is not "certainly pure"
    assert abs(pure["lift"] - 1 / (n3 / len(y["test"]))) < 1e-6
    assert pure["entropy_bits"] == 0.0
    assert 0.4 < mixed["purity"] < 0.6 and sorted(mixed["top_classes"][:2]) == [4, 9]
    assert abs(mixed["entropy_bits"] - 1.0) < 0.01  # two equally likely digits: one bit
    # the planted share of the MOSTLY latent's firings on 1s (up to sampling) is inside its interval
    m = res.latents[MOSTLY]
    n1, n2 = int((y["test"] == 1).sum()), int((y["test"] == 2).sum())
    expected = 0.75 * n1 / (0.75 * n1 + 0.25 * n2)
    assert m["purity_lo"] <= expected <= m["purity_hi"]


def test_hypotheses_name_the_planted_class_sets(world):
    res, _, _ = world
    for u, classes in PLANTED_SETS.items():
        assert res.latents[u]["hypothesis_classes"] == classes, (u, res.latents[u]["hypothesis"])
    assert res.latents[PURE]["grade"] == "high" and res.latents[MIXED]["grade"] == "high"
    assert res.latents[DENSE]["grade"] == "none" and res.latents[DENSE]["hypothesis_classes"] == []
    assert "fires on 4s and 9s" in res.latents[MIXED]["hypothesis"]
    assert res.latents[PURE]["heldout_precision"] == 1.0 and res.latents[PURE]["heldout_recall"] == 1.0
    assert abs(res.latents[RARE]["heldout_recall"] - 0.2) < 0.08  # fires on a fifth of the 7s
    for g, c in res.metrics["hypotheses"]["calibration_test"].items():
        if c["n_latents"]:
            assert c["holds"] and c["heldout_precision_pooled"] >= c["claimed_precision"], g


def test_a_larger_set_is_named_only_when_it_earns_a_higher_grade():
    counts = torch.tensor([[90, 10, 0, 0, 0, 0, 0, 0, 0, 0],   # {0} lower bound .83 -> medium; {0,1}: high
                           [300, 3, 0, 0, 0, 0, 0, 0, 0, 0],   # {0} already high: stays one digit
                           [2, 1, 0, 0, 0, 0, 0, 0, 0, 0]])    # 3 firings: below min_count, no hypothesis
    st = LabelStats(counts, counts.sum(1), 1000, torch.full((10,), 0.1, dtype=torch.float64))
    hyp = hypotheses.derive(st, max_classes=3, min_count=20)
    assert hyp["classes"] == [[0, 1], [0], []]
    assert hyp["grade"] == ["high", "high", "none"]


def test_wilson_interval_covers_at_its_nominal_rate():
    g = torch.Generator().manual_seed(1)
    coverages = []
    for p in (0.2, 0.5, 0.8, 0.9):
        for n in (20, 100, 400):
            k = torch.binomial(torch.full((20000,), float(n)), torch.full((20000,), p), generator=g)
            lo, hi = wilson(k, torch.full_like(k, n))
            coverages.append(float(((lo <= p) & (p <= hi)).double().mean()))
    assert min(coverages) > 0.92 and np.mean(coverages) > 0.94, coverages
    lo, hi = wilson(torch.tensor([3.0]), torch.tensor([3.0]))
    assert hi == 1.0 and lo < 0.45  # 3 of 3 is not "pure"


def planted_activation(pixels: torch.Tensor, u: int) -> torch.Tensor:
    """f_u computed from the pixels alone, by the planted construction (not by the SAE)."""
    h = pixels[:, 0, u].double() / 255
    return torch.where(h > 0, 2 * h - 1, 0.0)


def test_causal_effects_follow_the_planted_readout(world):
    """Against the planted model, run forward: the intervention adds the latent's mean firing activation v
    (computed from the pixels) to inputs where it is off, which moves logit (u + 5) mod 10 by 2·v and no other;
    the spliced model run on the intervened codes gives the same."""
    res, _, y = world
    sae, model, h, _, pixels = planted_world()
    f = sae.encode(h["test"])
    for u in range(5):
        r = res.latents[u]
        top = (u + 5) % 10
        act = planted_activation(pixels, u)
        v = float(act[act > 0].mean())
        assert r["intervention_value"] == pytest.approx(v, abs=1e-5)
        assert r["dla_top_class"] == top and r["intervention_top_class"] == top
        want = [2 * v if c == top else 0.0 for c in range(10)]
        assert r["delta_logit"] == pytest.approx(want, abs=1e-4)
        off = f[:, u] == 0
        bumped = f[off].clone()
        bumped[:, u] = v
        ran = (model.fc2(sae.decode(bumped)) - model.fc2(sae.decode(f[off]))).mean(0)
        assert ran.tolist() == pytest.approx(want, abs=1e-4)
        # ablating the latent where it fires lowers its top class's logit by 2·f there (the mode is the digit)
        assert r["ablation_delta_mode_logit"] <= 0 or r["mode_label"] != top
    # the pure latent's logit target is 5, not its input digit 3: its hypothesis says so
    assert "raises the logit of 5" in res.latents[PURE]["hypothesis"]


def test_heatmap_peaks_on_the_planted_pixel(world):
    res, _, _ = world
    for u in range(5):
        heat = res.heatmaps[u]
        assert int(heat.abs().argmax()) == u and heat[0, u] > 0


def test_examples_cover_the_activation_range(world):
    """Top examples are the k inputs with the highest planted activation, in order; each band example lies in
    its band's quantile range of the latent's firing activations."""
    res, cfg, y = world
    _, _, _, _, pixels = planted_world()
    for u in (MOSTLY, DENSE):
        r = res.latents[u]
        act = planted_activation(pixels, u)
        assert len(r["top_examples"]) == cfg.top_k
        want = act.topk(cfg.top_k).values.tolist()
        assert [e["activation"] for e in r["top_examples"]] == pytest.approx(want, abs=1e-5)
        assert [float(act[e["test_index"]]) for e in r["top_examples"]] == pytest.approx(want, abs=1e-5)
        firing = act[act > 0].sort().values
        for e in r["band_examples"]:
            lo, hi = (int(v) / 100 for v in e["band"][1:].split("-"))
            a, b = float(firing[int(lo * len(firing))]), float(firing[int(hi * len(firing)) - 1])
            assert a - 1e-6 <= e["activation"] <= b + 1e-6, e
        assert {e["band"] for e in r["band_examples"]} == {"q75-90", "q50-75", "q25-50", "q0-25"}
        assert all(e["label"] == int(y["test"][e["test_index"]]) for e in r["top_examples"] + r["band_examples"])


def test_interpretability_metrics_separate_sae_from_baselines(world):
    res, _, y = world
    sae = res.families["sae"]
    assert sae["n_counted"] == 5 and sae["n_high_purity"] == 2  # PURE and RARE are >= 0.8 pure on their own
    assert sae["classes_covered"] == [3, 7]
    # every 3 (PURE) and a fifth of the 7s (RARE)
    planted = float((y["test"] == 3).double().mean() + 0.2 * (y["test"] == 7).double().mean())
    assert abs(sae["inputs_covered"] - planted) < 0.01
    assert sae["probe"]["1"]["balanced_accuracy"] > 0.5
    # the rate-matched random dictionary mixes the hidden units: less pure, fewer pure units, worse probes
    rand = res.families["random"]
    assert rand["purity_mean"] < sae["purity_mean"] - 0.1 and rand["n_high_purity"] < sae["n_high_purity"]
    assert rand["probe"]["1"]["balanced_accuracy"] < sae["probe"]["1"]["balanced_accuracy"]


# ---------- units and probes ----------

def test_random_dictionary_matches_the_sae_firing_rates():
    g = torch.Generator().manual_seed(0)
    h = {s: torch.relu(torch.randn(n, 16, generator=g)) for s, n in N.items()}
    rates = torch.tensor([0.0, 0.01, 0.05, 0.2, 0.5])
    rand = random_units(h, rates, torch.Generator().manual_seed(1))
    got = rand.fires["train"].double().mean(0)
    assert torch.allclose(got.sort().values, rates.double().sort().values, atol=2 / N["train"])
    pos, p90 = neuron_units(h)
    assert torch.allclose(p90.fires["train"].double().mean(0), torch.full((16,), 0.1, dtype=torch.float64),
                          atol=2 / N["train"])
    assert torch.equal(pos.fires["test"], h["test"] > 0)
    pca = pca_units(h)
    var = pca.acts["train"].var(0)
    assert torch.all(var[:-1] >= var[1:] - 1e-4)  # components in order of explained variance


def test_top_purity_uses_the_highest_activations():
    acts = torch.tensor([[5.0], [4.0], [3.0], [0.0]])
    fires = acts > 0
    y = torch.tensor([1, 1, 2, 2])
    assert float(top_purity(acts, fires, y, top_n=2)) == 1.0
    assert abs(float(top_purity(acts, fires, y, top_n=3)) - 2 / 3) < 1e-9  # the non-firing row never counts


def test_logistic_regression_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2000, 4, generator=g, dtype=torch.float64)
    t = (x[..., 0] + 0.5 * x[..., 1] + 0.8 * torch.randn(3, 2000, generator=g, dtype=torch.float64)) > 1.0
    w = fit_logistic(x, t)
    for b in range(3):
        ref = sklearn.LogisticRegression(C=1.0, class_weight="balanced", tol=1e-10, max_iter=10000)
        ref.fit(x[b].numpy(), t[b].numpy())
        assert np.allclose(w[b, :-1].numpy(), ref.coef_[0], atol=1e-4)
        assert abs(float(w[b, -1]) - ref.intercept_[0]) < 1e-4
    # one feature matrix shared by every problem (the dense probe's path) gives the same fit
    shared = fit_logistic(x[0], t)
    per = fit_logistic(x[0].expand(3, -1, -1), t)
    assert torch.allclose(shared, per, atol=1e-8)


def test_subsample_warm_start_reaches_the_same_optimum():
    """Above WARM_ROWS rows Newton starts from a strided subsample's fit: the same optimum as from zero (w0 given,
    so no warm start), on the shared (dense probe) and per-problem paths, and the same as sklearn's."""
    from sae_pipeline.analysis import probing

    g = torch.Generator().manual_seed(1)
    n = probing.WARM_ROWS + 3000
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    t = torch.stack([(x[:, i] + 0.7 * torch.randn(n, generator=g, dtype=torch.float64)) > 0.8 for i in range(3)])
    for xs in (x, x.expand(3, -1, -1)):
        warm = fit_logistic(xs, t)
        cold = fit_logistic(xs, t, w0=torch.zeros(3, 7, dtype=torch.float64))
        assert torch.allclose(warm, cold, atol=1e-6), (warm - cold).abs().max()
    sklearn = pytest.importorskip("sklearn.linear_model")
    ref = sklearn.LogisticRegression(C=1.0, class_weight="balanced", tol=1e-10, max_iter=10000).fit(x.numpy(), t[0])
    assert np.allclose(warm[0, :-1].numpy(), ref.coef_[0], atol=1e-4)


def test_sparse_probe_finds_the_planted_feature():
    g = torch.Generator().manual_seed(0)
    y = {s: torch.randint(0, 10, (n,), generator=g) for s, n in N.items()}
    # column c carries digit c (with noise); 20 more columns are noise
    def feats(yy):
        x = torch.randn(len(yy), 30, generator=g) * 0.3
        x[torch.arange(len(yy)), yy] += 1.0
        return x
    x = {s: feats(y[s]) for s in N}
    ranking = mean_diff_ranking(x["train"], y["train"], 3)
    assert ranking[:, 0].tolist() == list(range(10))
    out = sparse_probing(x["train"], y["train"], x["test"], y["test"], ks=(1, 2))
    assert out["1"]["balanced_accuracy"] > 0.93 and out["1"]["f1"] > 0.7
    dense = probe(x["train"], y["train"], x["test"], y["test"], None)
    assert dense["balanced_accuracy"] >= out["1"]["balanced_accuracy"] - 0.01


class GeneralMLP(MLP):
    """The same MLP, without its linear read-out shortcut: the analysis must take the general path."""

    def readout(self, name):
        return None


def test_the_linear_readout_shortcut_equals_the_general_splice(world):
    """Causal effects through ``Site.rest`` forward passes (and the DLA through the Jacobian) equal the closed
    forms that the linear read-out allows, latent by latent."""
    res, cfg, _ = world
    sae, model, h, y, pixels = planted_world()
    general = GeneralMLP("relu", hidden_dim=6)
    general.load_state_dict(model.state_dict())
    res_g = analyze_sae(sae, Site(general, "hidden"), CARD, h, y, pixels, cfg, seed=0)
    keys = ("dla", "delta_logit", "delta_logprob", "flip_to_top_class", "ablation_delta_acc",
            "ablation_delta_mode_logit", "intervention_top_class", "purity", "hypothesis_classes")
    for a, b in zip(res.latents, res_g.latents):
        for k in keys:
            assert a[k] == pytest.approx(b[k], abs=1e-5), (a["latent"], k)
    assert torch.allclose(res.heatmaps, res_g.heatmaps)
