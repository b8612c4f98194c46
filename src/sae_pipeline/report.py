"""Readable forms of the analysis: a flat table, per-feature gallery PNGs and a static HTML dashboard."""
from __future__ import annotations

import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

KINDS = ("grid", "heatmap", "labels", "logits")


def image_name(feature: int, kind: str) -> str:
    return f"feature_{feature:03d}_{kind}.png"


def flat_table(reports: list[dict]) -> pd.DataFrame:
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
    return pd.DataFrame(rows)


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


def heatmap_png(grad: np.ndarray, mean_img: np.ndarray, scale: int = 6) -> bytes:
    """Input-gradient heatmap (red = raises the pre-activation, blue = lowers) beside the top examples' mean."""
    lim = max(float(np.abs(grad).max()), 1e-12)
    heat = colormaps["RdBu_r"]((grad / lim + 1) / 2)[..., :3]
    mean = np.repeat((mean_img / 255.0)[..., None], 3, axis=-1)
    gap = np.ones((28, 2, 3))
    arr = (np.concatenate([heat, gap, mean], axis=1) * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    return _png(img.resize((img.width * scale, img.height * scale), Image.NEAREST))


class BarPlotter:
    """One reused figure: a bar chart costs a redraw, not a new figure (about 10 ms each)."""

    def __init__(self):
        self.fig, self.ax = plt.subplots(figsize=(3.2, 2.0), dpi=80)

    def png(self, values, title: str, highlight: int, ylabel: str) -> bytes:
        ax = self.ax
        ax.clear()
        colors = ["#d62728" if c == highlight else "#7f7f7f" for c in range(len(values))]
        ax.bar(range(len(values)), values, color=colors)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(range(len(values)))
        ax.set_title(title, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=7)
        ax.tick_params(labelsize=7)
        self.fig.tight_layout()
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", metadata={"Software": None})
        return buf.getvalue()


def write_galleries(out_dir: Path, reports: list[dict], extras: dict, pixels: torch.Tensor) -> None:
    bars = BarPlotter()
    for n, r in enumerate(reports):
        i, iv = r["feature"], r["intervention"]
        files = {
            "grid": grid_png(pixels, extras["tops"][n]),
            "heatmap": heatmap_png(extras["heatmaps"][n], extras["mean_images"][n]),
            "labels": bars.png(r["label_hist"], f"feature {i}: labels when active", r["mode_label"], "count"),
            "logits": bars.png(iv["delta_logit"], f"feature {i}: Δlogit when added", iv["top_class"], "Δlogit"),
        }
        for kind, data in files.items():
            (out_dir / image_name(i, kind)).write_bytes(data)
    plt.close(bars.fig)


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
