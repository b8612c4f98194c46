"""Stage calibrate_lambda: log-uniform search for the sparsity penalty λ that gives the target val L0."""
import numpy as np
import pandas as pd

from sae_pipeline.activations import load_acts
from sae_pipeline.config import load_all, read_params
from sae_pipeline.io import save_csv, save_json
from sae_pipeline.runtime import run_stage, setup_torch
from sae_pipeline.sae_train import calibrate


def main(args):
    cfg = load_all(read_params(args.params))
    device = setup_torch(cfg["run"].device)
    acts = load_acts(np.load(args.acts)).to(device)
    sae_cfg = cfg["sae"]
    result = calibrate(sae_cfg, acts.train, acts.val, cfg["run"].seed)
    result = {"arch": sae_cfg.arch, "target_actives": sae_cfg.target_actives, **result}
    save_json(args.metrics, result)
    save_csv(args.plot, pd.DataFrame(result["probes"], columns=["probe", "lambda", "l0", "fvu"]))
    print(f"lambda={result['lambda']:.4g} converged={result['converged']} probes={len(result['probes'])}")


if __name__ == "__main__":
    run_stage(main, "acts", "metrics", "plot")
