"""plots/index.html: one offline page that links every model and site with its headline numbers.

Read from the metrics the other stages commit (``metrics/models/<model>.json``, ``metrics/sites/<site>/*.json``),
so it needs no torch and reruns in a fraction of a second when any of them changes.
"""
from __future__ import annotations

import html
from pathlib import Path

from .io import load_json

PROBE_K = ("1", "5")


def _f(v, nd=4) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def site_row(name: str, site_dir: Path) -> dict:
    s = load_json(site_dir / "summary.json")
    i = load_json(site_dir / "interpretability.json")
    a = load_json(site_dir / "analysis.json")
    probe = lambda fam, k: i.get(fam, {}).get("probe", {}).get(k, {}).get("balanced_accuracy")  # noqa: E731
    return {
        "site": name, "model": s.get("model"), "hook": s.get("hook"), "width": s.get("d_in"),
        "latents": a.get("n_latents"), "live": a.get("n_live"), "l0": s.get("achieved_actives_test"),
        "target": s.get("target_actives"), "fvu": s.get("fvu"), "kl": s.get("kl_logits"),
        "delta_acc": s.get("delta_acc_jumprelu"), "dead": s.get("dead_frac"), "dense": s.get("dense_frac"),
        "purity_sae": i["sae"]["purity_mean"], "purity_neurons": i["neurons"]["purity_mean"],
        "purity_random": i["random"]["purity_mean"],
        **{f"probe{k}_{fam}": probe(fam, k) for k in PROBE_K for fam in ("sae", "neurons", "pca")},
    }


def page(models: dict[str, dict], sites: list[dict], dashboards: str) -> str:
    model_rows = "".join(
        f"<tr><td>{html.escape(m)}</td><td>{_f(v.get('test_acc'))}</td><td>{_f(v.get('val_acc'))}</td>"
        f"<td>{html.escape(', '.join(r['site'] for r in sites if r['model'] == m))}</td></tr>"
        for m, v in models.items())
    site_rows = "".join(
        f"<tr><td><a href=\"{html.escape(dashboards)}/{html.escape(r['site'])}/index.html\">"
        f"{html.escape(r['site'])}</a></td><td>{html.escape(str(r['model']))}</td>"
        f"<td>{html.escape(str(r['hook']))}</td><td>{r['width']}</td><td>{r['live']}/{r['latents']}</td>"
        f"<td>{_f(r['l0'], 2)} ({r['target']})</td><td>{_f(r['fvu'])}</td><td>{_f(r['kl'])}</td>"
        f"<td>{_f(100 * r['delta_acc'], 2)}</td><td>{_f(r['dead'], 3)}</td><td>{_f(r['dense'], 3)}</td>"
        f"<td>{_f(r['purity_sae'], 3)} / {_f(r['purity_neurons'], 3)} / {_f(r['purity_random'], 3)}</td>"
        + "".join(f"<td>{_f(r[f'probe{k}_sae'], 3)} / {_f(r[f'probe{k}_neurons'], 3)} / "
                  f"{_f(r[f'probe{k}_pca'], 3)}</td>" for k in PROBE_K) + "</tr>"
        for r in sites)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SAE pipeline: models and sites</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:right}}td:first-child,th:first-child{{text-align:left}}
th{{background:#f3f3f3}}</style></head>
<body>
<h1>SAE pipeline: every model and site</h1>
<p>Test split. Each site's SAE is spliced into its model at that site (the rest of the model runs from there).
Click a site for its feature browser.</p>
<h2>Models</h2>
<table id="models"><thead><tr><th>model</th><th>test acc</th><th>val acc</th><th>sites with an SAE</th></tr>
</thead><tbody>{model_rows}</tbody></table>
<h2>Sites</h2>
<table id="sites"><thead><tr><th>site</th><th>model</th><th>hook</th><th>width</th><th>live latents</th>
<th>L0 (target)</th><th>FVU</th><th>KL</th><th>Δacc (pp)</th><th>dead</th><th>dense</th>
<th>purity SAE / neurons / random</th><th>probe k=1 SAE / neurons / PCA</th><th>probe k=5 SAE / neurons / PCA</th>
</tr></thead><tbody>{site_rows}</tbody></table>
</body></html>
"""


def build(models: list[str], sites: list[str], models_dir: Path, sites_dir: Path, dashboards: str) -> str:
    """The page for the models and sites params.yaml names (not whatever folders an older run left behind)."""
    return page({m: load_json(Path(models_dir) / f"{m}.json") for m in models},
                [site_row(s, Path(sites_dir) / s) for s in sites], dashboards)


def gather_csv(folder: str | Path, names: list[str]) -> str:
    """The CSVs ``<folder>/<name>.csv`` as one table, a ``series`` column first naming each row's file."""
    out, header = [], None
    for name in names:
        lines = (Path(folder) / f"{name}.csv").read_text().splitlines()
        if header is None:
            header = "series," + lines[0]
            out.append(header)
        elif "series," + lines[0] != header:
            raise ValueError(f"{folder}/{name}.csv has other columns than the first file ({lines[0]})")
        out += [f"{name},{ln}" for ln in lines[1:]]
    return "\n".join(out) + "\n"
