"""The feature browser: one static page (``index.html``) plus two small PNGs per live latent in ``img/``.

It opens from ``file://`` with no network: the script and style are inlined from ``browser.js``/``browser.css``
beside this file, the data is a JSON block in the page, the charts are SVG drawn by the script, and the images
are relative links that the page loads only when a latent's card is opened.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import torch

from ..analysis.run import AnalysisResult
from . import images

HERE = Path(__file__).parent
IMG_DIR = "img"


def _c(v, nd=4):
    """Round for the page: the browser shows 2-3 decimals, and the page stays a few hundred KB."""
    return None if v is None else round(float(v), nd)


def page_record(r: dict, sel_rank: dict[int, int], heat_lim: float, positions: list[tuple[int, int]]) -> dict:
    ex = [(e["test_index"], e["label"], _c(e["activation"], 3), "") for e in r["top_examples"]]
    ex += [(e["test_index"], e["label"], _c(e["activation"], 3), e["band"]) for e in r["band_examples"]]
    return {
        "id": r["latent"], "dead": r["dead"], "dense": r["dense"], "n": r["n_test"], "ntrain": r["n_train"],
        "rate": _c(r["firing_rate"], 6), "mean": _c(r["mean_activation"]), "max": _c(r["max_activation"]),
        "hist": r["label_hist"], "mode": r["mode_label"], "purity": _c(r["purity"], 6), "lo": _c(r["purity_lo"]),
        "hi": _c(r["purity_hi"]), "lift": _c(r["lift"], 3), "ent": _c(r["entropy_bits"], 3),
        "classes": r["hypothesis_classes"], "grade": r["grade"], "prec": _c(r["heldout_precision"]),
        "rec": _c(r["heldout_recall"]), "text": r["hypothesis"], "dl": [_c(v) for v in r["delta_logit"]],
        "top": r["intervention_top_class"], "value": _c(r["intervention_value"]), "nint": r["intervention_n"],
        "flip": _c(r["flip_to_top_class"]),
        "ab": [_c(r["ablation_delta_acc"], 6), _c(r["ablation_delta_acc_where_active"], 5),
               _c(r["ablation_delta_mode_logit"])],
        "near": [[n["latent"], _c(n["cosine"], 3)] for n in r["nearest"]],
        "dens": {"e": [_c(e, 4) for e in r["density_hist"]["bin_edges"]], "c": r["density_hist"]["counts"]},
        "ex": [[*e, row, col] for e, (row, col) in zip(ex, positions)],
        "heat": _c(heat_lim, 5), "sel": sel_rank.get(r["latent"]),
    }


def write_images(out_dir: Path, res: AnalysisResult, pixels: torch.Tensor) -> dict[int, tuple[float, list]]:
    """Two PNGs per latent that fires on test; returns {latent: (heatmap range, tile positions)}."""
    img_dir = out_dir / IMG_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for r in res.latents:
        u = r["latent"]
        if not r["n_test"]:
            out[u] = (0.0, [])
            continue
        idx = [e["test_index"] for e in r["top_examples"]] + [e["test_index"] for e in r["band_examples"]]
        pos = images.tile_positions(len(r["top_examples"]), len(r["band_examples"]))
        (img_dir / f"ex_{u}.png").write_bytes(images.examples_png(pixels, idx, pos))
        png, lim = images.heatmap_png(res.heatmaps[u].numpy(), res.mean_images[u].numpy())
        (img_dir / f"heat_{u}.png").write_bytes(png)
        out[u] = (lim, pos)
    return out


def page_html(res: AnalysisResult, families: dict, summary: dict, cfg, placed: dict, where: str,
              partners_js: str = "") -> str:
    """``where``: the model and site, e.g. "mlp (mlp), site hidden: one image: the hidden layer";
    ``partners_js``: the path, relative to the page, of the universality stage's script that gives each latent's
    partners in the other sites (written later, by a downstream stage; the cards show them when it is there)."""
    sel_rank = {u: i for i, u in enumerate(res.selected)}
    data = {
        "img_prefix": IMG_DIR + "/",
        "tile": {"size": images.TILE, "gap": images.GAP, "cols": images.COLS},
        "min_count": cfg.min_count, "high_purity": cfg.high_purity,
        "families": families, "analysis": res.metrics, "per_class": res.per_class,
        "latents": [page_record(r, sel_rank, *placed[r["latent"]]) for r in res.latents],
    }
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    s = summary
    headline = (f"SAE {s.get('arch')} with {len(res.latents)} latents ({res.metrics['n_live']} live, "
                f"{res.metrics['n_dense']} dense): L0 {s.get('achieved_actives_test', 0):.2f} (target "
                f"{s.get('target_actives')}), FVU {s.get('fvu', 0):.4f}, spliced test accuracy "
                f"{s.get('recon_acc_jumprelu', 0):.4f} vs base {s.get('baseline_acc', 0):.4f}.")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SAE feature browser</title>
<style>{(HERE / "browser.css").read_text()}</style></head>
<body>
<h1>SAE feature browser <small>(MNIST {html.escape(where)}; statistics on the test split)</small></h1>
<p><a href="../../index.html">All models and sites</a></p>
<p>{html.escape(headline)} Hypotheses are derived on train and scored on test; grades come from the 95% lower
bound of the share of firings in the named digits (high ≥ 90%, medium ≥ 70%, low ≥ 50%).</p>
<details open id="summary"><summary>Against baselines</summary><div id="summary-body"></div></details>
<details id="per-digit"><summary>Best latents per digit (ranked by train F1 of "fires ⇒ digit"; test precision and recall)</summary>
<div id="digits"></div></details>
<div class="filters">
<label>latent id <input id="f-search" type="search" placeholder="e.g. 12"></label>
<label>status <select id="f-status"><option value="live">live</option><option value="all">all</option>
<option value="sparse">not dense</option><option value="dense">dense</option><option value="dead">dead</option></select></label>
<label>digit <select id="f-class"><option value="">any</option></select></label>
<label>grade <select id="f-grade"><option value="">any</option><option>high</option><option>medium</option>
<option>low</option><option>none</option></select></label>
<label>purity ≥ <input id="f-purity" type="number" min="0" max="1" step="0.05" value="0"></label>
<label>firing rate ≥ (%) <input id="f-rate" type="number" min="0" max="100" step="0.5" value="0"></label>
<span id="count"></span>
</div>
<div class="layout">
<div class="tablebox"><table id="latents"><thead></thead><tbody></tbody></table></div>
<div id="card"><p>Click a row (or open <code>#latent-&lt;id&gt;</code>) to see a latent's card.</p></div>
</div>
{f'<script src="{html.escape(partners_js)}"></script>' if partners_js else ""}
<script type="application/json" id="data">{blob}</script>
<script>{(HERE / "browser.js").read_text()}</script>
</body></html>
"""
