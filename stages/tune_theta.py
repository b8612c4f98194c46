"""Stage tune_theta: land the val L0 on the target, then measure on test and export for SAELens."""
import torch

from sae_pipeline import base
from sae_pipeline.activations import load_acts
from sae_pipeline.config import load_all, read_params
from sae_pipeline.evaluate import summary
from sae_pipeline.export import export
from sae_pipeline.io import load_json, load_npz, load_torch, save_json, save_torch
from sae_pipeline.runtime import run_stage, setup_torch
from sae_pipeline.sae import load_sae, sae_state
from sae_pipeline.sae_train import tune_threshold


def main(args):
    cfg = load_all(read_params(args.params))
    setup_torch("cpu")
    sae_cfg = cfg["sae"]
    acts = load_acts(load_npz(args.acts))
    sae = load_sae(load_torch(args.sae))
    tuning = tune_threshold(sae, acts.val, sae_cfg.target_actives)
    model = base.load_model(load_torch(args.base_model), load_json(args.base_card))
    y_test = torch.from_numpy(load_npz(args.data)["y_test"])
    lam = load_json(args.calibration)["lambda"]
    result = summary(sae, acts, model, y_test, lam, sae_cfg.tau, sae_cfg.arch, sae_cfg.target_actives,
                     tuning["l0_val_after"])
    save_torch(args.out, sae_state(sae))
    export(sae, acts.shift, acts.scale, args.export, result)
    save_json(args.tuning, tuning)
    save_json(args.metrics, result)
    print({k: result[k] for k in ("achieved_actives_test", "delta_acc_jumprelu", "fvu", "dead_frac")})


if __name__ == "__main__":
    run_stage(main, "acts", "sae", "calibration", "base-model", "base-card", "data", "out", "export", "tuning",
              "metrics")
