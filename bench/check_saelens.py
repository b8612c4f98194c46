"""Load a site's export with SAELens itself and compare with its metrics/sites/<site>/summary.json (SAELens is
not a project dependency). The spliced accuracy runs the rest of the model through the project's Site.rest.

    python3 -m venv /tmp/saelens && /tmp/saelens/bin/pip install sae-lens
    /tmp/saelens/bin/python bench/check_saelens.py --site vit-block4   # from the project root, after `make repro`
"""
import argparse
import json
import os
import sys

import torch
from sae_lens import SAE

sys.path.insert(0, os.path.dirname(__file__))
import site_inputs  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--site", default="mlp-hidden")
args = ap.parse_args()
paths = site_inputs.stage_args("train_sae", args.site)
inp = site_inputs.load(args.site)
sae = SAE.load_from_disk(paths["export"], device="cpu")
h, ctx = inp.site.collect(inp.x["test"])
with torch.no_grad():
    f = sae.encode(h)
    logits = inp.site.logits(sae.decode(f), ctx)
y = torch.from_numpy(inp.data["y_test"])
acc = (logits.argmax(-1) == y).float().mean().item()
summary = json.load(open(paths["metrics"]))
l0 = (f > 0).float().sum(-1).mean().item()
print(f"{args.site} ({sae.cfg.metadata.hook_name}): {type(sae).__name__}: L0 {l0:.6f} "
      f"(project {summary['achieved_actives_test']}), spliced accuracy {acc:.6f} "
      f"(project {summary['recon_acc_jumprelu']})")
