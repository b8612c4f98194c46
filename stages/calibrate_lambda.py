"""Stage calibrate_lambda: the sparsity penalty λ for the target L0, from short probes (sae_train.calibrate).

The probes start from warm_start's starting point, the very point the final training starts from, and run the
first epochs of the final training's own schedule, so the λ they find is the one that holds the target L0 in
train_sae (within a few percent; tune_theta lands it exactly).
"""

from sae_pipeline import base
from sae_pipeline.activations import load_acts
from sae_pipeline.config import load_all, read_params
from sae_pipeline.io import load_json, load_npz, load_torch, save_csv, save_json
from sae_pipeline.runtime import run_stage, setup_torch
from sae_pipeline.sae import load_sae
from sae_pipeline.sae_train import Readout, calibrate


def main(args):
    cfg = load_all(read_params(args.params))
    device = setup_torch(cfg["run"].device)
    acts = load_acts(load_npz(args.acts)).to(device)
    start = load_sae(load_torch(args.start)).to(device)
    model = base.load_model(load_torch(args.base_model), load_json(args.base_card))
    readout = Readout.from_model(model.fc2, acts.shift, acts.scale).to(device)
    sae_cfg = cfg["sae"]
    result = {"arch": sae_cfg.arch, "target_actives": sae_cfg.target_actives,
              **calibrate(sae_cfg, start, acts.train, acts.val, cfg["run"].seed, readout)}
    save_json(args.metrics, result)
    save_csv(args.plot, result["probes"], ["probe", "lambda", "l0", "fvu"])
    print(f"lambda={result['lambda']:.4g} converged={result['converged']} probes={len(result['probes'])}")


if __name__ == "__main__":
    run_stage(main, "acts", "start", "base-model", "base-card", "metrics", "plot")
