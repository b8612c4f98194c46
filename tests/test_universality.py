"""Universality measures on planted truth: two synthetic "sites" built from a known set of shared and exclusive
sparse features, each under its own permutation, scales and (for the raw activations) rotation."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from sae_pipeline.universality import (Centred, Control, SiteUnits, bracket, compare, geometry, linear_cka, matching,
                                        pearson, rsa, svcca, u_score)

N, SHARED, EXCL = 4000, 20, 10


def planted(seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = (torch.rand(N, SHARED + 2 * EXCL, generator=g) < 0.1) * (0.5 + torch.rand(N, SHARED + 2 * EXCL,
                                                                                      generator=g))
    shared, ex_a, ex_b = feats[:, :SHARED], feats[:, SHARED:SHARED + EXCL], feats[:, SHARED + EXCL:]
    perm_a, perm_b = torch.randperm(SHARED + EXCL, generator=g), torch.randperm(SHARED + EXCL, generator=g)
    a = torch.cat([shared, ex_a], 1)[:, perm_a] * (0.5 + 2 * torch.rand(SHARED + EXCL, generator=g))
    b = torch.cat([shared, ex_b], 1)[:, perm_b] * (0.5 + 2 * torch.rand(SHARED + EXCL, generator=g))
    # ground truth: column i of a and column j of b are the same shared feature
    truth = {(int((perm_a == k).nonzero()), int((perm_b == k).nonzero())) for k in range(SHARED)}
    return a, b, truth, g


def test_matching_recovers_the_planted_pairs_and_the_shuffle_sits_at_chance():
    a, b, truth, g = planted()
    out = compare(a, b, g)
    strong = {(i, j) for i, j, r in out["pairs"] if r >= 0.9}
    assert strong == truth  # every shared feature found, nothing else matched strongly
    assert out["mutual_nn_rho_0.7"] == SHARED and out["mutual_nn_rho_0.5"] == SHARED
    # exclusive features pair with something in the assignment, at chance-level correlation
    assert all(abs(r) < 0.2 for i, j, r in out["pairs"] if (i, j) not in truth)
    null = out["null_shuffled"]
    assert null["mutual_nn_rho_0.5"] == 0 and abs(null["hungarian_mean"]) < 0.05
    assert out["hungarian_mean"] > 0.6


def test_cka_sees_shared_structure_through_rotations_and_not_after_a_shuffle():
    a, b, _, g = planted(1)
    ra = torch.linalg.qr(torch.randn(64, 64, generator=g))[0][:SHARED + EXCL]  # isometric embeddings in 64 dims
    rb = torch.linalg.qr(torch.randn(48, 48, generator=g))[0][:SHARED + EXCL]
    xa, xb = a @ ra, b @ rb
    assert abs(linear_cka(xa, xa @ torch.linalg.qr(torch.randn(64, 64, generator=g))[0]) - 1) < 1e-9  # invariance
    real, shuffled = linear_cka(xa, xb), linear_cka(xa, xb[torch.randperm(N, generator=g)])
    out = compare(xa, xb, torch.Generator().manual_seed(0))
    assert abs(out["cka"] - real) < 1e-6
    assert real > 0.4 and shuffled < 0.05, (real, shuffled)


def test_pearson_and_hungarian_agree_with_numpy_and_scipy():
    a, b, _, _ = planted(2)
    an, bn = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    ref = np.corrcoef(an.T, bn.T)[:a.shape[1], a.shape[1]:]
    assert np.allclose(pearson(a, b).numpy(), ref, atol=1e-10)
    r, c = linear_sum_assignment(-ref)
    assert abs(matching(pearson(a, b))["hungarian_mean"] - ref[r, c].mean()) < 1e-6
    # a unit that never fires (all zeros) is left out rather than matched at ρ = 0
    a0 = torch.cat([a, torch.zeros(N, 1)], 1)
    assert matching(pearson(a0, b))["n_a"] == a.shape[1]


def test_geometry_nulls_equal_recomputing_each_shuffle():
    """The shuffled-pairing nulls reuse one SVD basis and one rank matrix per side, permuted: the same numbers as
    recomputing SVCCA and RSA on every shuffled pairing; a planted common geometry is significant."""
    g = torch.Generator().manual_seed(3)
    w_a = torch.randn(60, 12, generator=g, dtype=torch.float64)
    w_b = w_a @ torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))[0] * 3  # rotated, scaled
    w_b = torch.cat([w_b, torch.randn(60, 4, generator=g, dtype=torch.float64)], 1)  # and extra dimensions
    out = geometry(w_a, w_b, torch.Generator().manual_seed(9), n_null=20)
    assert abs(out["rsa"] - rsa(w_a, w_b)) < 1e-6 and abs(out["svcca"] - svcca(w_a, w_b)) < 1e-6
    gen = torch.Generator().manual_seed(9)
    recomputed = [(svcca(w_a, w_b[p]), rsa(w_a, w_b[p])) for p in (torch.randperm(60, generator=gen)
                                                                     for _ in range(20))]
    assert abs(out["svcca_null_mean"] - sum(v for v, _ in recomputed) / 20) < 1e-6
    assert abs(out["rsa_null_mean"] - sum(v for _, v in recomputed) / 20) < 1e-6
    assert out["rsa"] > 0.9
    assert out["rsa_p"] == pytest.approx(1 / 21, abs=1e-6) and out["svcca_p"] == pytest.approx(1 / 21, abs=1e-6)
    assert abs(out["rsa_null_mean"]) < 0.1


def test_one_site_writes_empty_outputs_without_loading_anything(tmp_path):
    """A one-model configuration (e.g. `make repro` of the MLP alone) has no pair: the universality, shared
    dictionary and control stages write empty outputs at once and read none of their inputs (which may not
    exist)."""
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["models"] = {"mlp": params["models"]["mlp"]}
    params["sites"] = {"mlp-hidden": params["sites"]["mlp-hidden"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out, none = tmp_path / "out", str(tmp_path / "none")

    def stage(name, *args):
        proc = subprocess.run([sys.executable, str(root / f"stages/{name}.py"), "--params",
                               str(tmp_path / "params.yaml"), *args], capture_output=True, text=True,
                              env={"PYTHONPATH": str(root / "src"), "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr

    stage("universality", *(a for k in ("acts", "sae", "analysis", "controls", "control-sae", "data")
                            for a in (f"--{k}", none)),
          "--metrics", str(out / "m.json"), "--pairs", str(out / "p.csv"), "--plots", str(out / "plots"),
          "--dashboards", str(out / "dashboard"))
    assert json.loads((out / "m.json").read_text()) == {"split": "test", "pairs": {}}
    assert (out / "p.csv").read_text().startswith("site_a,") and (out / "plots/best_partner.csv").exists()
    assert 'href="../dashboard/mlp-hidden/index.html' not in (out / "plots/index.html").read_text()  # no latents
    stage("shared_dictionary", "--acts", none, "--models", none, "--data", none, "--model", str(out / "shared"),
          "--latents", str(out / "l.csv"), "--metrics", str(out / "s.json"), "--plots", str(out / "shared_plots"))
    assert "skipped" in json.loads((out / "s.json").read_text()) and (out / "shared").is_dir()
    # the floor and ceiling models and their SAEs: nothing to compare them with either
    stage("control_base", "--name", "mlp", "--data", none, "--card", none, "--out", str(out / "cb"),
          "--metrics", str(out / "cb.json"))
    stage("control_sae", "--site", "mlp-hidden", "--site-params", none, "--controls", none, "--base-card", none,
          "--data", none,
          "--out", str(out / "cs"), "--metrics", str(out / "cs.json"))
    assert all("skipped" in json.loads((out / f).read_text()) for f in ("cb.json", "cs.json"))


def test_families_join_mutual_partners_and_the_page_links_every_card():
    from sae_pipeline.universality_page import exclusive, families, page_html

    sites = ["a", "b", "c"]
    # a#1 <-> b#2 <-> c#3 are mutual best partners (one family over three sites); a#4 -> b#5 is one-way; a#6 has
    # no partner above 0.2 anywhere (exclusive)
    partners = {("a", "b"): {1: (2, 0.8), 4: (5, 0.6), 6: (9, 0.1)}, ("b", "a"): {2: (1, 0.8), 5: (7, 0.6)},
                ("b", "c"): {2: (3, 0.7)}, ("c", "b"): {3: (2, 0.7)},
                ("a", "c"): {1: (3, 0.55), 6: (3, 0.15)}, ("c", "a"): {3: (1, 0.55)}}
    fams = families(sites, partners)
    assert [[(s, u) for s, u, _ in f] for f in fams] == [[("a", 1), ("b", 2), ("c", 3)]]
    n_test = {"a": {1: 50, 4: 20, 6: 30}, "b": {2: 40, 5: 10}, "c": {3: 5}}
    assert exclusive("a", sites, partners, n_test["a"]) == [(6, 0.15)]
    page = page_html(sites, partners, n_test, "../dashboard")
    assert 'href="../dashboard/b/index.html#latent-2"' in page and 'src="../dashboard/c/img/ex_3.png"' in page
    assert "id='family-0'" in page and "id='family-1'" not in page
    assert "http" not in page and "<script" not in page  # offline


def test_u_score_is_0_at_the_floor_1_at_the_ceiling_and_its_interval_covers_a_planted_value():
    """U on comparisons whose per-latent values are planted: a cross-site agreement equal to the floor scores 0,
    equal to the ceiling 1, halfway 0.5, each inside its bootstrap interval; a ceiling at the floor is undefined."""
    g = torch.Generator().manual_seed(0)

    def comp(mean, n=400):
        rho = (mean + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)).tolist()
        return {"pairs": [(i, i, r) for i, r in enumerate(rho)], "n_a": n, "mutual_nn_rho_0.5": int(n * mean)}

    floor, ceil_a, ceil_b = comp(0.2), comp(0.7), comp(0.9)
    truth = {"floor": 0.0, "ceiling": 1.0, "half": 0.5}
    for name, cross in (("floor", comp(0.2)), ("ceiling", comp(0.8)), ("half", comp(0.5))):
        for measure in ("hungarian_mean", "mutual_share_0.5"):
            u = u_score(cross, floor, ceil_a, ceil_b, measure, g)
            lo, hi = u["U_ci95"]
            assert lo <= u["U"] <= hi and abs(u["U"] - truth[name]) < 0.03, (name, measure, u)
            assert abs(u["ceiling"] - 0.8) < 0.02 and abs(u["floor"] - 0.2) < 0.02
            assert hi - lo < 0.25  # 400 latents per term: a tight interval
    same = comp(0.6)
    assert u_score(comp(0.5), same, same, same, "hungarian_mean", g)["U"] is None  # no room between the two


def test_floor_and_ceiling_bracket_planted_sites():
    """Sites built from planted features: the ceiling shares every feature of its site, the floor models share
    none (independent features), and the two sites share half. U lands near 0.5 on both measures, the floor and
    its shuffled null sit at chance, and every pair gets a score with an interval."""
    g = torch.Generator().manual_seed(3)
    k, n = 40, 4000

    def feats(m):
        return (torch.rand(n, m, generator=g) < 0.1) * (0.5 + torch.rand(n, m, generator=g))

    def view(cols, dim=64):  # scaled, permuted features, and a rotated embedding as the "raw" units
        x = cols[:, torch.randperm(cols.shape[1], generator=g)] * (0.5 + torch.rand(cols.shape[1], generator=g))
        return x, x @ torch.linalg.qr(torch.randn(dim, dim, generator=g))[0][:cols.shape[1]]

    own_a, own_b, shared = feats(k // 2), feats(k // 2), feats(k // 2)
    fa, fb = torch.cat([shared, own_a], 1), torch.cat([shared, own_b], 1)
    sites, controls = [], {}
    for name, f in (("a", fa), ("b", fb)):
        codes, raw = view(f)
        sites.append(SiteUnits(name, codes, raw, codes, torch.eye(k), []))
        controls[(name, "ceiling")] = Control(*view(f))
        controls[(name, "floor")] = Control(*view(feats(k)))
    prep = {(s.name, kk): Centred.of(getattr(s, kk)) for s in sites for kk in ("codes", "raw")}
    ceiling, floor = bracket(sites, controls, prep, g)
    assert ceiling["a"]["codes"]["hungarian_mean"] > 0.95 and ceiling["a"]["codes"]["mutual_nn_rho_0.7"] == k
    fl = floor["a~b"]["codes"]
    assert abs(fl["hungarian_mean"]) < 0.05 and fl["mutual_nn_rho_0.5"] == 0
    assert abs(fl["null_shuffled"]["hungarian_mean"]) < 0.05
    full = {kk: compare(prep[("a", kk)], prep[("b", kk)], g) for kk in ("codes",)}
    u = u_score(full["codes"], fl, ceiling["a"]["codes"], ceiling["b"]["codes"], "hungarian_mean", g)
    assert 0.4 < u["U"] < 0.6 and u["U_ci95"][0] < u["U"] < u["U_ci95"][1], u
    u = u_score(full["codes"], fl, ceiling["a"]["codes"], ceiling["b"]["codes"], "mutual_share_0.5", g)
    assert abs(u["U"] - 0.5) < 0.01, u  # exactly the shared half has a mutual partner


def test_a_change_to_one_site_moves_no_other_pairs_numbers():
    """`analyse` over three planted sites with their floor and ceiling, then again with site c's SAE replaced:
    every number of the pair a~b (its nulls, bootstrap intervals, random pairs, floor and U) is the same, and the
    pairs with c changed. (One generator drawn through every pair in turn moved them all.)"""
    from sae_pipeline.universality import analyse

    g = torch.Generator().manual_seed(5)
    n, k = 1500, 24

    def feats(m):
        return (torch.rand(n, m, generator=g) < 0.1) * (0.5 + torch.rand(n, m, generator=g))

    def site(name, f):
        raw = f @ torch.randn(f.shape[1], 32, generator=g)
        latents = [{"latent": u, "n_test": int((f[:, u] > 0).sum()), "label_hist": torch.rand(10, generator=g).tolist(),
                    "hypothesis_classes": [u % 10], "delta_logit": torch.randn(10, generator=g).tolist(),
                    "top_examples": [{"test_index": int(i)} for i in f[:, u].topk(4).indices]}
                   for u in range(f.shape[1])]
        return SiteUnits(name, f, raw, feats(f.shape[1]), torch.randn(f.shape[1], 32, generator=g), latents)

    shared = feats(k // 2)
    base = {name: site(name, torch.cat([shared, feats(k // 2)], 1)) for name in ("a", "b", "c")}
    controls = {(name, kind): Control(feats(k), feats(32)) for name in base for kind in ("floor", "ceiling")}
    pixels = torch.rand(n, 28, 28, generator=g)
    first = analyse(list(base.values()), pixels, torch.Generator().manual_seed(300), controls)[0]
    # another SAE at site c, with fewer live latents, and so at its floor and ceiling models (the control SAEs
    # follow the site's recipe)
    changed = dict(base, c=site("c", feats(k - 6)))
    controls.update({("c", kind): Control(feats(k - 6), feats(32)) for kind in ("floor", "ceiling")})
    second = analyse(list(changed.values()), pixels, torch.Generator().manual_seed(300), controls)[0]
    assert first["pairs"]["a~b"] == second["pairs"]["a~b"]
    assert first["ceiling"]["a"] == second["ceiling"]["a"]
    assert first["pairs"]["a~c"] != second["pairs"]["a~c"] and first["pairs"]["b~c"] != second["pairs"]["b~c"]


def test_the_docs_tables_are_the_committed_metrics():
    """docs/universality.md quotes metrics/universality.json through tools/universality_tables.py: after a run that
    changes an SAE the tables must be regenerated with it (they had drifted from the metrics once)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "tools/universality_tables.py"),
                          str(root / "metrics/universality.json")], capture_output=True, text=True, check=True).stdout
    docs = (root / "docs/universality.md").read_text()
    tables = [t for t in out.split("\n\n") if t.startswith("| pair |")]
    assert len(tables) == 2
    for table in tables:
        assert table.strip() in docs, table.splitlines()[0]
