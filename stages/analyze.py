"""Stage analyze (one per site): every latent of the exported SAE (evidence, hypothesis, causal effects), the SAE-dependent
interpretability metrics next to the baselines, the 50-feature report and the feature browser (test split)."""
from sae_pipeline.forkserver import handoff

handoff()  # the rest runs in a fork of a process that has imported torch (sae_pipeline/forkserver.py)

import os

import torch

from sae_pipeline import base, browser
from sae_pipeline.analysis.run import PROBE_KEY, analyze_sae
from sae_pipeline.analysis.units import split_tensors
from sae_pipeline.analysis.table import csv_rows
from sae_pipeline.config import load_all, read_params
from sae_pipeline.export import sae_from_export
from sae_pipeline.io import atomic_dir, load_json, load_npz, load_torch, save_csv, save_json
from sae_pipeline.runtime import run_stage, setup_torch


def main(args):
    cfg = load_all(read_params(args.params))
    setup_torch("cpu")
    site_name = cfg["sites"][args.site].site
    acts, data = load_npz(args.acts), load_npz(args.data)
    h, y = split_tensors(acts, site_name, data)
    pixels = torch.from_numpy(data["x_test"])
    card = base.load_card(args.base_card)
    site = base.load_site(load_torch(args.base_model), card, site_name)
    baselines = load_json(args.baselines, ("neurons", "neurons_p90", "pca", "dense_probe", PROBE_KEY))
    res = analyze_sae(sae_from_export(args.sae), site, card, h, y, pixels, cfg["analysis"], cfg["run"].seed,
                      baselines.pop(PROBE_KEY))
    families = {**res.families, **baselines}
    with atomic_dir(args.browser) as tmp:
        placed = browser.write_images(tmp, res, pixels)
        where = f"{card['name']} ({card['architecture']}), site {site_name}: {card['sites'][site_name]['row']}"
        (tmp / "index.html").write_text(browser.page_html(res, families, load_json(args.summary),
                                                          cfg["analysis"], placed, where,
                                                          os.path.relpath(args.partners, args.browser)))
    save_json(args.latents_json, {"split": "test", "latents": res.latents}, compact=True)
    save_csv(args.latents_csv, csv_rows(res.latents))
    save_json(args.report_json, {"split": "test", "select": cfg["analysis"].select, "features": res.report},
              compact=True)
    save_csv(args.report_csv, csv_rows([res.latents[u] for u in res.selected]))
    save_json(args.interpretability, {"split": "test", "min_count": cfg["analysis"].min_count,
                                      "high_purity": cfg["analysis"].high_purity, **families})
    save_json(args.metrics, res.metrics)
    m = res.metrics
    print(f"{m['n_live']} live latents; selected ({m['select']}) purity {m['selected_purity_mean']:.2f}, "
          f"{m['selected_label_coverage']}/10 digits; SAE mean purity {families['sae']['purity_mean']:.2f} vs "
          f"neurons {families['neurons']['purity_mean']:.2f}, random {families['random']['purity_mean']:.2f}; "
          f"absorption {families['sae']['absorption']['absorption_rate_mean']:.3f}, latents to 90% recall "
          f"{families['sae']['absorption']['latents_to_90_mean']:.1f}")


if __name__ == "__main__":
    run_stage(main, "site", "acts", "sae", "base-model", "base-card", "data", "summary", "baselines", "latents-json",
              "latents-csv", "report-json", "report-csv", "interpretability", "metrics", "browser", "partners")
