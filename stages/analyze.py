"""Stage analyze: per-feature evidence, hypotheses, galleries and the HTML dashboard (test split)."""
import os

import numpy as np
import torch

from sae_pipeline import base, report
from sae_pipeline.activations import load_acts
from sae_pipeline.analysis import aggregate, analyze
from sae_pipeline.config import load_all, read_params
from sae_pipeline.io import atomic_dir, load_json, save_csv, save_json, write_text
from sae_pipeline.runtime import run_stage, setup_torch
from sae_pipeline.sae import load_sae


def main(args):
    cfg = load_all(read_params(args.params))
    setup_torch("cpu")
    acts = load_acts(np.load(args.acts))
    sae = load_sae(torch.load(args.sae, weights_only=True))
    card = load_json(args.base_card)
    model = base.load_model(torch.load(args.base_model, weights_only=True), card)
    data = np.load(args.data)
    pixels, y = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
    reports, extras = analyze(sae, acts, model, card, pixels, y, cfg["analysis"], cfg["run"].seed)
    agg = aggregate(reports, cfg["analysis"])
    with atomic_dir(args.features) as tmp:
        report.write_galleries(tmp, reports, extras, pixels)
    prefix = os.path.relpath(args.features, args.dashboard) + "/"
    page = report.dashboard_html(reports, agg, load_json(args.summary), prefix)
    write_text(os.path.join(args.dashboard, "index.html"), page)
    save_json(args.report_json, {"split": "test", "features": reports})
    save_csv(args.report_csv, report.flat_table(reports))
    save_json(args.metrics, agg)
    print(agg)


if __name__ == "__main__":
    run_stage(main, "acts", "sae", "base-model", "base-card", "data", "summary", "report-json", "report-csv",
              "metrics", "features", "dashboard")
