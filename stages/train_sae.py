"""Stage train_sae: the final SAE with the calibrated λ, and its training curves."""
import numpy as np
import pandas as pd

from sae_pipeline.activations import load_acts
from sae_pipeline.config import load_all, read_params
from sae_pipeline.io import load_json, save_csv, save_json, save_torch
from sae_pipeline.runtime import run_stage, setup_torch
from sae_pipeline.sae_train import evaluate_split, train


def main(args):
    cfg = load_all(read_params(args.params))
    device = setup_torch(cfg["run"].device)
    acts = load_acts(np.load(args.acts)).to(device)
    lam = load_json(args.calibration)["lambda"]
    sae, history = train(cfg["sae"], acts.train, lam, cfg["run"].seed)
    val = evaluate_split(sae, acts.val)
    save_torch(args.sae, {"config": sae.config(), "state_dict": {k: v.cpu() for k, v in sae.state_dict().items()}})
    save_json(args.metrics, {"lambda": lam, "steps": history[-1]["step"], "final_loss": history[-1]["loss"],
                             "l0_val": round(val["l0"], 4), "fvu_val": round(val["fvu"], 5)})
    save_csv(args.curve, pd.DataFrame(history))
    print(f"val l0={val['l0']:.2f} fvu={val['fvu']:.4f}")


if __name__ == "__main__":
    run_stage(main, "acts", "calibration", "sae", "metrics", "curve")
