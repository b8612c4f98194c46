"""Load the export with SAELens itself and compare with metrics/summary.json (not a project dependency).

    python3 -m venv /tmp/saelens && /tmp/saelens/bin/pip install sae-lens
    /tmp/saelens/bin/python bench/check_saelens.py      # from the project root, after `make repro`
"""
import json

import numpy as np
import torch
from sae_lens import SAE

sae = SAE.load_from_disk("data/sae/saelens", device="cpu")
h = torch.from_numpy(np.load("data/activations/acts.npz")["h_test"])  # raw hidden activations
with torch.no_grad():
    f = sae.encode(h)
    h_hat = sae.decode(f)
state = torch.load("data/models/base.pt", weights_only=True)
y = torch.from_numpy(np.load("data/prepared/mnist.npz")["y_test"])
acc = ((h_hat @ state["fc2.weight"].T + state["fc2.bias"]).argmax(-1) == y).float().mean().item()
summary = json.load(open("metrics/summary.json"))
print(f"{type(sae).__name__}: L0 {(f > 0).float().sum(-1).mean().item():.6f} "
      f"(project {summary['achieved_actives_test']}), spliced accuracy {acc:.6f} "
      f"(project {summary['recon_acc_jumprelu']})")
