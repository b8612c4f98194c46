"""Do two sites learn the same features? Matching and geometry of two sets of units on the same images.

The units are an SAE's latents (or a site's raw units) on the shared test images, ``a: [N, U]`` and ``b: [N, V]``
with row n of both from image n. Every measure here has a null that keeps it honest:

- **matching** (Li, Yosinski et al. 2016, "Convergent learning"; Lan et al. 2024): the Pearson correlation of
  every pair of units across the images; each unit's best partner; the one-to-one (Hungarian) assignment's mean
  correlation over units that fire; the mutual nearest neighbours with ρ >= 0.5 and >= 0.7;
- **CKA** (Kornblith et al. 2019): linear CKA = ||Bᵀ A||²_F / (||Aᵀ A||_F ||Bᵀ B||_F) on centred A, B;
- **nulls**: the same measures with the rows of ``b`` shuffled (image order broken: chance), which every measure
  must sit at. The Hungarian mean's 95% interval is a bootstrap over the matched pairs (the latents), for
  fixed images;
- **floor and ceiling** (``controls``): the same measures between the untrained networks' SAEs (floor) and
  between each site's SAE and the SAE of the same site of the same architecture trained from another seed
  (ceiling), and the score U = (cross - floor) / (ceiling - floor), 0 at the floor, 1 at the ceiling.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from .analysis.examples import mean_images
from .runtime import generator

THRESHOLDS = (0.5, 0.7)
N_BOOT = 1000  # bootstrap resamples of the matched pairs for the Hungarian mean's 95% interval


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[U, V]: Pearson correlation of every column of ``a`` with every column of ``b`` over the rows (float64); a
    constant column correlates 0 with everything."""
    return Centred.of(a).unit.T @ Centred.of(b).unit


def matching(corr: torch.Tensor) -> dict:
    """Best partners, the Hungarian assignment and mutual nearest neighbours of a correlation matrix [U, V]
    (rows: units of site A, columns: units of site B; units that never vary are all-zero rows or columns)."""
    live_a, live_b = corr.abs().sum(1) > 0, corr.abs().sum(0) > 0
    c = corr[live_a][:, live_b]
    best_ab, best_ba = c.max(1), c.max(0)
    rows, cols = linear_sum_assignment(-c.numpy())
    hung = c[rows, cols]
    mutual = best_ba.indices[best_ab.indices] == torch.arange(len(c))
    rho = best_ab.values
    ia, ib = torch.nonzero(live_a)[:, 0], torch.nonzero(live_b)[:, 0]
    return {
        "n_a": int(live_a.sum()), "n_b": int(live_b.sum()),
        "best_partner_mean_a": round(float(best_ab.values.mean()), 6),
        "best_partner_mean_b": round(float(best_ba.values.mean()), 6),
        "hungarian_mean": round(float(hung.mean()), 6),
        **{f"mutual_nn_rho_{t}": int((mutual & (rho >= t)).sum()) for t in THRESHOLDS},
        "pairs": [(int(ia[r]), int(ib[k]), round(float(v), 6)) for r, k, v in zip(rows, cols, hung)],
        "best_partner_a": [(int(ia[i]), int(ib[j]), round(float(v), 6))
                           for i, (j, v) in enumerate(zip(best_ab.indices, best_ab.values))],
        "best_partner_b": [(int(ib[j]), int(ia[i]), round(float(v), 6))
                           for j, (i, v) in enumerate(zip(best_ba.indices, best_ba.values))],
    }


def linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    """Linear CKA of two representations of the same rows (Kornblith et al. 2019, eq. for the linear kernel):
    ||Bᵀ A||²_F / (||Aᵀ A||_F ||Bᵀ B||_F) on centred A, B (``compare`` computes it from ``Centred``)."""
    ca, cb = Centred.of(a), Centred.of(b)
    return float((ca.centred.T @ cb.centred).pow(2).sum()) / max(ca.gram_norm * cb.gram_norm, 1e-300)


@dataclass
class Centred:
    """A unit set prepared once for many comparisons: centred columns, the same scaled to unit norm (Pearson is
    then one product) and the Frobenius norm of its Gram matrix (CKA's denominator)."""

    centred: torch.Tensor
    unit: torch.Tensor
    gram_norm: float

    @classmethod
    def of(cls, x: torch.Tensor) -> "Centred":
        c = x.double() - x.double().mean(0)
        n = c.norm(dim=0)
        return cls(c, torch.where(n > 0, c / n.clamp_min(1e-300), 0.0), float((c.T @ c).norm()))


def compare(a: torch.Tensor | Centred, b: torch.Tensor | Centred, gen: torch.Generator) -> dict:
    """Matching and CKA of two unit sets on the same rows, and the same with ``b``'s rows shuffled (the
    chance level: no feature can be shared once the images no longer line up)."""
    a, b = (v if isinstance(v, Centred) else Centred.of(v) for v in (a, b))
    perm = torch.randperm(len(b.unit), generator=gen)
    real = matching(a.unit.T @ b.unit)
    null = matching(a.unit.T @ b.unit[perm])
    den = max(a.gram_norm * b.gram_norm, 1e-300)
    cka, cka_null = (float((a.centred.T @ bb).pow(2).sum()) / den for bb in (b.centred, b.centred[perm]))
    keys = ("best_partner_mean_a", "best_partner_mean_b", "hungarian_mean",
            *(f"mutual_nn_rho_{t}" for t in THRESHOLDS))
    rho = torch.tensor([r for _, _, r in real["pairs"]], dtype=torch.float64)
    boot = rho[torch.randint(len(rho), (N_BOOT, len(rho)), generator=gen)].mean(1)
    return {
        **{k: real[k] for k in ("n_a", "n_b", *keys)},
        "hungarian_mean_ci95": [round(float(boot.quantile(0.025)), 6), round(float(boot.quantile(0.975)), 6)],
        "cka": round(cka, 6),
        "null_shuffled": {**{k: null[k] for k in keys}, "cka": round(cka_null, 6)},
        "pairs": real["pairs"], "best_partner_a": real["best_partner_a"], "best_partner_b": real["best_partner_b"],
        "best": [r for _, _, r in real["best_partner_a"]], "best_null": [r for _, _, r in null["best_partner_a"]],
    }


def _basis(m: torch.Tensor, keep: float = 0.99) -> torch.Tensor:
    """Orthonormal [rows, k] basis of the top singular directions of the column-centred ``m`` that hold ``keep``
    of its variance (the "SV" step of SVCCA), from the eigenvectors of the small [cols, cols] covariance."""
    m = m.double() - m.double().mean(0)
    evals, evecs = torch.linalg.eigh(m.T @ m)  # ascending
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    var = evals.cumsum(0) / evals.sum().clamp_min(1e-300)
    k = min(int((var < keep).sum()) + 1, int((evals > evals[0] * 1e-12).sum()))
    return (m @ evecs[:, :k]) / evals[:k].sqrt()


def svcca(x: torch.Tensor, y: torch.Tensor, keep: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017) of two matrices with the same rows (here: paired latents, their decoder
    directions as columns): each reduced to the top singular directions that hold ``keep`` of its variance, then
    the mean canonical correlation of the two reduced sets."""
    return _mean_canonical(_basis(x, keep), _basis(y, keep))


def _mean_canonical(qa: torch.Tensor, qb: torch.Tensor) -> float:
    """Mean canonical correlation of two orthonormal bases: the singular values of qaᵀ qb, here as the square
    roots of the eigenvalues of the smaller of its two Gram matrices (the same numbers, a cheaper routine)."""
    m = qa.T @ qb
    g = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return float(torch.linalg.eigvalsh(g).clamp_min(0).sqrt().mean())


def _pair_ranks(m: torch.Tensor) -> torch.Tensor:
    """[P, P]: the rank of each off-diagonal entry of the rows' cosine-similarity matrix among all P(P-1)/2
    pairs (symmetric), so that the ranks of a row-permuted matrix are the same ranks permuted."""
    m = m.double() / m.double().norm(dim=1, keepdim=True).clamp_min(1e-300)
    i, j = torch.tril_indices(len(m), len(m), -1)
    vals = (m @ m.T)[i, j]
    ranks = torch.empty_like(vals).scatter_(0, vals.argsort(), torch.arange(len(vals), dtype=vals.dtype))
    out = torch.zeros(len(m), len(m), dtype=torch.float64)
    out[i, j] = ranks  # ties broken by position: cosines of real directions practically never tie
    return out + out.T


def _spearman_from_ranks(ra: torch.Tensor, rb: torch.Tensor) -> float:
    """Spearman correlation of two symmetric pair-rank matrices (``_pair_ranks``): the ranks over the M pairs are
    0..M-1 on both sides, so their mean and spread are known and only the cross sum is computed."""
    n = len(ra)
    m = n * (n - 1) // 2
    mean, var = (m - 1) / 2, (m * m - 1) / 12
    cross = float((ra * rb).sum()) / 2  # each pair twice, the zero diagonal adds nothing
    return (cross / m - mean * mean) / var


def rsa(x: torch.Tensor, y: torch.Tensor) -> float:
    """RSA (Kriegeskorte et al. 2008; Lan et al. 2024): Spearman correlation of the lower triangles of the two
    rows' cosine-similarity matrices."""
    return _spearman_from_ranks(_pair_ranks(x), _pair_ranks(y))


def geometry(w_a: torch.Tensor, w_b: torch.Tensor, gen: torch.Generator, n_null: int = 100) -> dict:
    """SVCCA and RSA of paired latents' decoder rows ``w_a[k] <-> w_b[k]``, each with the mean of ``n_null``
    shuffled pairings and the p-value of the real pairing against them (Lan et al. 2024's null). A pairing
    shuffle permutes the rows of ``w_b``, which permutes its SVD basis and its similarity ranks the same way, so
    each is computed once."""
    qa, qb = _basis(w_a), _basis(w_b)
    ra, rb = _pair_ranks(w_a), _pair_ranks(w_b)
    perms = [torch.randperm(len(w_b), generator=gen) for _ in range(n_null)]
    real = {"svcca": _mean_canonical(qa, qb), "rsa": _spearman_from_ranks(ra, rb)}
    null = {"svcca": torch.tensor([_mean_canonical(qa, qb[p]) for p in perms]),
            "rsa": torch.tensor([_spearman_from_ranks(ra, rb[p][:, p]) for p in perms])}
    out = {"n_pairs": len(w_a)}
    for name in ("svcca", "rsa"):
        out[name] = round(real[name], 6)
        out[f"{name}_null_mean"] = round(float(null[name].mean()), 6)
        out[f"{name}_p"] = round((1 + int((null[name] >= real[name]).sum())) / (1 + n_null), 6)
    return out


@dataclass
class SiteUnits:
    """One site's units on the shared test images, and its latents' evidence from the analyze stage."""

    name: str
    codes: torch.Tensor  # [N, U] the exported SAE's latent activations
    raw: torch.Tensor  # [N, d] the site's own units
    random: torch.Tensor  # [N, U] a random-direction dictionary rate-matched to the SAE (analysis.units)
    w_dec: torch.Tensor  # [U, d] the SAE's decoder rows
    latents: list[dict]  # latents.json's rows: label_hist, hypothesis_classes, delta_logit, top_examples


DETAIL = ("pairs", "best", "best_null", "best_partner_a", "best_partner_b")  # per-unit lists: not metrics
MEANING_RHO = 0.5  # matched pairs whose meaning is compared: Hungarian pairs with at least this correlation
GEOMETRY_RHO = 0.1  # pairs kept for SVCCA/RSA (Lan et al. 2024 drop weaker ones)


def _brief(c: dict) -> dict:
    """A comparison's summary numbers, without its per-unit lists."""
    return {k: v for k, v in c.items() if k not in DETAIL}


def _corr_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of two [P, k] matrices (0 where a row is constant)."""
    a, b = a.double() - a.double().mean(1, keepdim=True), b.double() - b.double().mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300), 0.0)


def meaning(a: SiteUnits, b: SiteUnits, pairs: list[tuple[int, int]], mean_img: dict[str, torch.Tensor]) -> dict:
    """For latent pairs (i of a, j of b): agreement of their digit histograms (cosine), of their hypotheses'
    digit sets (Jaccard, pairs where both have one), of their Δlogit profiles and of their mean top-example images
    (Pearson). Means over the pairs."""
    if not pairs:
        return {"n": 0}
    ia, ib = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    def hist(s, idx):
        return torch.tensor([s.latents[u]["label_hist"] for u in idx.tolist()], dtype=torch.float64)

    ha, hb = hist(a, ia), hist(b, ib)
    cos = (ha * hb).sum(1) / (ha.norm(dim=1) * hb.norm(dim=1)).clamp_min(1e-300)
    jac = [len(set(sa) & set(sb)) / len(set(sa) | set(sb)) for sa, sb in
           ((a.latents[i]["hypothesis_classes"], b.latents[j]["hypothesis_classes"]) for i, j in pairs) if sa and sb]
    dl = lambda s, idx: torch.tensor([s.latents[u]["delta_logit"] for u in idx.tolist()])  # noqa: E731
    return {"n": len(pairs),
            "label_hist_cosine": round(float(cos.mean()), 6),
            "hypothesis_jaccard": round(sum(jac) / len(jac), 6) if jac else None,
            "delta_logit_corr": round(float(_corr_rows(dl(a, ia), dl(b, ib)).mean()), 6),
            "mean_image_corr": round(float(_corr_rows(mean_img[a.name][ia], mean_img[b.name][ib]).mean()), 6)}


def compare_sites(a: SiteUnits, b: SiteUnits, mean_img: dict[str, torch.Tensor], gen: torch.Generator,
                  prep: dict | None = None) -> dict:
    """Every measure for one pair of sites: matching of SAE latents, raw units and random dictionaries (each with
    its shuffled-images null), CKA, geometry of paired decoders, and meaning of matched against random pairs.
    ``prep``: the sites' unit sets as ``Centred``, by (site, kind), when prepared once for many pairs."""
    prep = prep or {(s.name, k): Centred.of(getattr(s, k)) for s in (a, b) for k in ("codes", "raw", "random")}
    sae, raw, rnd = (compare(prep[(a.name, k)], prep[(b.name, k)], gen) for k in ("codes", "raw", "random"))
    strong = [(i, j) for i, j, r in sae["pairs"] if r >= GEOMETRY_RHO]
    geo = geometry(a.w_dec[[i for i, _ in strong]], b.w_dec[[j for _, j in strong]], gen) if len(strong) > 2 else {}
    matched = [(i, j) for i, j, r in sae["pairs"] if r >= MEANING_RHO]
    live_a = [r["latent"] for r in a.latents if r["n_test"] > 0]
    live_b = [r["latent"] for r in b.latents if r["n_test"] > 0]
    n = min(len(live_a), len(live_b), max(len(matched), 1))
    ra = torch.tensor(live_a)[torch.randperm(len(live_a), generator=gen)[:n]].tolist()
    rb = torch.tensor(live_b)[torch.randperm(len(live_b), generator=gen)[:n]].tolist()
    return {"sae": _brief(sae), "raw": _brief(raw), "random_dictionary": _brief(rnd),
            "cka_raw": raw["cka"], "cka_sae": sae["cka"], "geometry": geo,
            "meaning_matched": meaning(a, b, matched, mean_img),
            "meaning_random_pairs": meaning(a, b, list(zip(ra, rb)), mean_img),
            "_sae_full": sae, "_raw_full": raw, "_pairs": sae["pairs"], "_partners": (sae["best_partner_a"], sae["best_partner_b"]),
            "_best": {"sae": sae["best"], "sae, images shuffled": sae["best_null"], "raw units": raw["best"],
                      "random dictionary": rnd["best"]}}


U_MEASURES = ("hungarian_mean", "mutual_share_0.5")  # the per-latent measures U is computed for, with intervals


def _per_unit(c: dict, measure: str) -> torch.Tensor:
    """The per-latent values whose mean is ``measure`` for one comparison (``compare``'s output): the Hungarian
    pairs' correlations, or 1 for each of site A's live latents with a mutual best partner at ρ >= 0.5."""
    if measure == "hungarian_mean":
        return torch.tensor([r for *_, r in c["pairs"]], dtype=torch.float64)
    return (torch.arange(c["n_a"]) < c["mutual_nn_rho_0.5"]).double()


def u_score(cross: dict, floor: dict, ceiling_a: dict, ceiling_b: dict, measure: str, gen: torch.Generator) -> dict:
    """U = (cross - floor) / (ceiling - floor) for one pair of sites A, B and one measure, where cross compares A
    with B, floor the untrained networks' A with B, and the ceiling is the mean of A's and B's agreement with
    themselves trained from another seed. The 95% interval resamples each comparison's latents (independent
    dictionaries) ``N_BOOT`` times; U is undefined (None) where the ceiling does not exceed the floor."""
    terms = [_per_unit(c, measure) for c in (cross, floor, ceiling_a, ceiling_b)]

    def u(c, f, ca, cb):
        den = (ca + cb) / 2 - f
        return torch.where(den > 0, (c - f) / torch.where(den > 0, den, 1.0), torch.nan)

    point = [t.mean() for t in terms]
    boot = [t[torch.randint(len(t), (N_BOOT, len(t)), generator=gen)].mean(1) for t in terms]
    ub = u(*boot)
    val = float(u(*point))
    r = lambda v: None if v != v else round(float(v), 6)  # noqa: E731 - NaN -> None
    ci = [None, None] if val != val else [r(ub.nanquantile(0.025)), r(ub.nanquantile(0.975))]
    return {"cross": r(point[0]), "floor": r(point[1]), "ceiling": r((point[2] + point[3]) / 2), "U": r(val),
            "U_ci95": ci}


HIST_BINS = torch.linspace(-0.2, 1.0, 25)


def best_partner_hist(corr_best: list[float]) -> list[tuple[float, float]]:
    """(bin centre, share of units) of best-partner correlations, for the Vega histogram lines."""
    v = torch.tensor(corr_best, dtype=torch.float64).clamp(-0.2, 0.9999)
    counts = torch.histc(v, bins=len(HIST_BINS) - 1, min=-0.2, max=1.0)
    centres = (HIST_BINS[:-1] + HIST_BINS[1:]) / 2
    return [(round(float(c), 4), round(float(n) / max(len(v), 1), 6)) for c, n in zip(centres, counts)]


@dataclass
class Control:
    """A site of a floor or ceiling model (``controls``) on the shared test images: its SAE's codes, its units."""

    codes: torch.Tensor
    raw: torch.Tensor


def stream(gen: torch.Generator, name: str) -> torch.Generator:
    """A generator of its own for one site's or one pair's draws (shuffles, bootstraps, random pairs), from
    ``gen``'s seed and the name (``runtime.generator``): so that a change to one site's SAE moves no other pair's
    nulls or intervals, which one generator drawn through every pair in turn did."""
    return generator(gen.initial_seed(), zlib.crc32(name.encode()))


def bracket(sites: list[SiteUnits], controls: dict[tuple[str, str], Control], prep: dict, gen: torch.Generator
            ) -> tuple[dict, dict]:
    """The floor and ceiling comparisons: each site's SAE codes and raw units against its ceiling model's
    (``ceiling[site]``), and each pair's floor models against each other (``floor[pair]``), with their nulls."""
    for (name, kind), c in controls.items():
        for k in ("codes", "raw"):
            prep[(f"{name}:{kind}", k)] = Centred.of(getattr(c, k))
    ceiling = {}
    for s in sites:
        g = stream(gen, f"{s.name}:ceiling")
        ceiling[s.name] = {k: compare(prep[(s.name, k)], prep[(f"{s.name}:ceiling", k)], g) for k in ("codes", "raw")}
    floor = {}
    for i, a in enumerate(sites):
        for b in sites[i + 1:]:
            g = stream(gen, f"{a.name}~{b.name}:floor")
            floor[f"{a.name}~{b.name}"] = {k: compare(prep[(f"{a.name}:floor", k)], prep[(f"{b.name}:floor", k)],
                                                      g) for k in ("codes", "raw")}
    return ceiling, floor


def analyse(sites: list[SiteUnits], pixels: torch.Tensor, gen: torch.Generator,
            controls: dict[tuple[str, str], Control] | None = None) -> tuple[dict, list[dict], list[dict], dict]:
    """Every pair of sites: ``metrics/universality.json``'s content, the matched-pairs table (one row per
    Hungarian pair), the best-partner histogram rows (``series``: pair and unit kind) and each latent's best
    partner in every other site, ``{(site, other): {latent: (partner, ρ)}}``. With ``controls`` (by (site,
    "floor" | "ceiling")), each pair also gets its floor, ceiling and U (``u_score``)."""
    # each latent's mean top-example image, as its browser card shows it
    mean_img = {s.name: mean_images(pixels, [[e["test_index"] for e in r["top_examples"]] for r in s.latents]
                                    ).flatten(1) for s in sites}
    prep = {(s.name, k): Centred.of(getattr(s, k)) for s in sites for k in ("codes", "raw", "random")}
    metrics, rows, hist, partners = {"split": "test", "pairs": {}}, [], [], {}
    ceiling, floor = bracket(sites, controls, prep, gen) if controls else ({}, {})
    if ceiling:
        metrics["ceiling"] = {s: {k: _brief(c) for k, c in v.items()} for s, v in ceiling.items()}
    for i, a in enumerate(sites):
        for b in sites[i + 1:]:
            key = f"{a.name}~{b.name}"
            g = stream(gen, key)
            out = compare_sites(a, b, mean_img, g, prep)
            if ceiling:
                out["floor"] = {k: _brief(c) for k, c in floor[key].items()}
                full = {"codes": out.pop("_sae_full"), "raw": out.pop("_raw_full")}
                out["universality_score"] = {
                    f"{'sae' if k == 'codes' else 'raw'}_{m}": u_score(full[k], floor[key][k], ceiling[a.name][k],
                                                                         ceiling[b.name][k], m, g)
                    for k in ("codes", "raw") for m in U_MEASURES}
                cka = [out["cka_sae"], floor[key]["codes"]["cka"],
                       (ceiling[a.name]["codes"]["cka"] + ceiling[b.name]["codes"]["cka"]) / 2]
                out["universality_score"]["sae_cka"] = {
                    "cross": cka[0], "floor": cka[1], "ceiling": round(cka[2], 6),
                    "U": round((cka[0] - cka[1]) / (cka[2] - cka[1]), 6) if cka[2] > cka[1] else None}
            out.pop("_sae_full", None), out.pop("_raw_full", None)
            pairs, best = out.pop("_pairs"), out.pop("_best")
            for (x, y), lst in zip(((a.name, b.name), (b.name, a.name)), out.pop("_partners")):
                partners[(x, y)] = {i: (j, r) for i, j, r in lst}
            metrics["pairs"][key] = out
            rows += [{"site_a": a.name, "latent_a": la, "site_b": b.name, "latent_b": lb, "rho": r} for la, lb, r
                     in pairs]
            for kind, values in best.items():
                for c, share in best_partner_hist(values):
                    hist.append({"series": f"{key} {kind}", "rho": c, "share": share})
    return metrics, rows, hist, partners
