"""Readable forms of the analysis: a flat table, per-feature gallery PNGs and a static HTML dashboard.

Images are drawn with PIL (and torchvision's make_grid), not matplotlib: 200 small PNGs cost about a second
instead of ten, which keeps the analyze stage inside its time budget.
"""
from __future__ import annotations

import html
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

KINDS = ("grid", "heatmap", "labels", "logits")


def image_name(feature: int, kind: str) -> str:
    return f"feature_{feature:03d}_{kind}.png"


def flat_table(reports: list[dict]) -> list[dict]:
    """One flat row per feature, for feature_report.csv (``pd.read_csv`` gives one column per field)."""
    rows = []
    for r in reports:
        iv = r["intervention"]
        row = {k: r[k] for k in ("feature", "firing_rate", "n_active", "mean_activation", "max_activation",
                                 "mode_label", "purity", "lift", "dla_top_class", "causal_signs_agree",
                                 "confidence", "hypothesis")}
        row.update({"top_class": iv["top_class"], "delta_logit_top": iv["delta_logit"][iv["top_class"]],
                    "pred_flip_to_top_class": iv["pred_flip_to_top_class"],
                    "ablation_delta_acc": r["ablation"]["delta_acc"],
                    "ablation_delta_mode_logit": r["ablation"]["delta_mode_logit"],
                    "top_indices": " ".join(str(e["test_index"]) for e in r["top_examples"])})
        row.update({f"label_{c}": n for c, n in enumerate(r["label_hist"])})
        row.update({f"dlogit_{c}": v for c, v in enumerate(iv["delta_logit"])})
        rows.append(row)
    return rows


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def grid_png(pixels: torch.Tensor, idx: list[int], scale: int = 2) -> bytes:
    """Top examples as one grid (torchvision.utils.make_grid), white on black, upscaled with nearest."""
    g = make_grid(pixels[idx].unsqueeze(1).float() / 255.0, nrow=8, padding=2, pad_value=0.5)
    arr = (g[0].clamp(0, 1).numpy() * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    return _png(img.resize((img.width * scale, img.height * scale), Image.NEAREST))


def diverging(v: np.ndarray) -> np.ndarray:
    """[-1, 1] -> RGB in [0, 1]: blue (-1), white (0), red (+1)."""
    v = np.clip(v, -1, 1)[..., None]
    red, blue, white = np.array([0.70, 0.09, 0.17]), np.array([0.13, 0.40, 0.67]), np.ones(3)
    return np.where(v >= 0, white + v * (red - white), white - v * (blue - white))


def heatmap_png(grad: np.ndarray, mean_img: np.ndarray, scale: int = 6) -> bytes:
    """Input-gradient heatmap (red = raises the pre-activation, blue = lowers) beside the top examples' mean."""
    lim = max(float(np.abs(grad).max()), 1e-12)
    heat = diverging(grad / lim)
    mean = np.repeat((mean_img / 255.0)[..., None], 3, axis=-1)
    gap = np.ones((28, 2, 3))
    arr = (np.concatenate([heat, gap, mean], axis=1) * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    return _png(img.resize((img.width * scale, img.height * scale), Image.NEAREST))


def bars_png(values, title: str, highlight: int, width: int = 260, height: int = 150) -> bytes:
    """A bar per class 0-9 (the highlighted one red), a zero line, the class under each bar, the range on top."""
    font = ImageFont.load_default()
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((6, 4), title, fill="black", font=font)
    top, bottom, left, right = 30, height - 18, 8, width - 8
    lo, hi = min(0.0, float(min(values))), max(0.0, float(max(values)))
    span = (hi - lo) or 1.0
    y0 = bottom - (0 - lo) / span * (bottom - top)
    step = (right - left) / len(values)
    for c, v in enumerate(values):
        x0, x1 = left + c * step + 2, left + (c + 1) * step - 2
        yv = bottom - (float(v) - lo) / span * (bottom - top)
        d.rectangle([x0, min(y0, yv), x1, max(y0, yv)], fill="#d62728" if c == highlight else "#8c8c8c")
        d.text((x0 + step / 2 - 5, bottom + 3), str(c), fill="black", font=font)
    d.line([left, y0, right, y0], fill="black")
    d.text((width - 110, 17), f"max {hi:+.3g}  min {lo:+.3g}", fill="#555555", font=font)
    return _png(img)


def write_galleries(out_dir: Path, reports: list[dict], extras: dict, pixels: torch.Tensor) -> None:
    for n, r in enumerate(reports):
        i, iv = r["feature"], r["intervention"]
        files = {
            "grid": grid_png(pixels, extras["tops"][n]),
            "heatmap": heatmap_png(extras["heatmaps"][n], extras["mean_images"][n]),
            "labels": bars_png(r["label_hist"], f"feature {i}: labels while active", r["mode_label"]),
            "logits": bars_png(iv["delta_logit"], f"feature {i}: mean dlogit when added", iv["top_class"]),
        }
        for kind, data in files.items():
            (out_dir / image_name(i, kind)).write_bytes(data)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{cursor:pointer;background:#f0f0f0;position:sticky;top:0}td.t{text-align:left}
.card{border:1px solid #bbb;border-radius:6px;padding:10px;margin:14px 0}.card:target{outline:3px solid #e69500}
.imgs img{margin-right:8px;vertical-align:top;border:1px solid #ddd}
.high{color:#1a7f37;font-weight:bold}.medium{color:#9a6700}.low{color:#888}
"""

_SORT_JS = """
document.querySelectorAll('#features th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var body = document.querySelector('#features tbody');
    var rows = Array.from(body.rows), asc = th.dataset.asc !== '1';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v, nx = parseFloat(x), ny = parseFloat(y);
      var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return asc ? c : -c;
    });
    rows.forEach(function(r){ body.appendChild(r); });
    document.querySelectorAll('#features th').forEach(function(h){ h.dataset.asc = ''; });
    th.dataset.asc = asc ? '1' : '0';
  });
});
"""


def dashboard_html(reports: list[dict], aggregates: dict, summary: dict, image_prefix: str) -> str:
    """A static page: sortable table of all features, one deep-linkable card (#feature-<id>) per feature."""
    e = html.escape
    cols = [("feature", "feature"), ("firing rate", "firing_rate"), ("mode", "mode_label"), ("purity", "purity"),
            ("lift", "lift"), ("top class", None), ("Δlogit top", None), ("agree", "causal_signs_agree"),
            ("confidence", "confidence")]
    head = "".join(f"<th>{e(c)}</th>" for c, _ in cols) + "<th>hypothesis</th>"
    rows, cards = [], []
    for r in reports:
        i, iv = r["feature"], r["intervention"]
        top, dl = iv["top_class"], iv["delta_logit"][iv["top_class"]]
        vals = [i, r["firing_rate"], r["mode_label"], r["purity"], r["lift"], top, dl,
                int(r["causal_signs_agree"]), r["confidence"]]
        shown = [f'<a href="#feature-{i}">{i}</a>', f"{r['firing_rate']:.1%}", r["mode_label"],
                 f"{r['purity']:.2f}", f"{r['lift']:.1f}", top, f"{dl:+.2f}",
                 "yes" if r["causal_signs_agree"] else "no", f'<span class="{r["confidence"]}">{r["confidence"]}</span>']
        cells = "".join(f'<td data-v="{e(str(v))}">{s}</td>' for v, s in zip(vals, shown))
        rows.append(f'<tr>{cells}<td class="t" data-v="{e(r["hypothesis"])}">{e(r["hypothesis"])}</td></tr>')
        imgs = "".join(f'<img src="{image_prefix}{image_name(i, k)}" alt="feature {i} {k}">' for k in KINDS)
        ab = r["ablation"]
        cards.append(
            f'<div class="card" id="feature-{i}"><h3>Feature {i} '
            f'<span class="{r["confidence"]}">({r["confidence"]})</span></h3>'
            f'<p>{e(r["hypothesis"])}</p><div class="imgs">{imgs}</div>'
            f'<p>firing rate {r["firing_rate"]:.2%} ({r["n_active"]} inputs); mean/max activation '
            f'{r["mean_activation"]:.3f}/{r["max_activation"]:.3f}; label histogram {r["label_hist"]}; '
            f'direct logit attribution top class {r["dla_top_class"]}; ablation: Δacc {ab["delta_acc"]:+.4f} '
            f'(where active {ab["delta_acc_where_active"]:+.3f}), Δ mode logit {ab["delta_mode_logit"]:+.3f}; '
            f'top test indices {", ".join(str(t["test_index"]) for t in r["top_examples"])}</p></div>')
    s = summary
    headline = (f"SAE {e(str(s.get('arch')))}: L0 {s.get('achieved_actives_test', 0):.2f} (target "
                f"{s.get('target_actives')}), FVU {s.get('fvu', 0):.4f}, spliced accuracy "
                f"{s.get('recon_acc_jumprelu', 0):.4f} vs base {s.get('baseline_acc', 0):.4f}. "
                f"{aggregates['n_features']} features analysed; mean purity {aggregates['mean_purity']:.2f}; "
                f"{aggregates['share_high_confidence']:.0%} high-confidence; label coverage "
                f"{aggregates['label_coverage']}/10.")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>SAE feature dashboard</title>"
            f"<style>{_STYLE}</style></head><body><h1>SAE feature dashboard (MNIST test split)</h1>"
            f"<p>{headline}</p><p>Images per card: top examples; input-gradient heatmap (red raises the feature) "
            f"beside the top examples' mean; label histogram while active; mean Δlogit when the feature is added."
            f"</p><table id='features'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"{''.join(cards)}<script>{_SORT_JS}</script></body></html>\n")
