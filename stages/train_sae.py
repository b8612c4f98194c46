"""Stage train_sae: train the SAE from calibrate_lambda's starting point with the calibrated λ."""

from sae_pipeline import base
from sae_pipeline.activations import load_acts
from sae_pipeline.config import load_all, read_params
from sae_pipeline.io import load_json, load_npz, load_torch, save_csv, save_json, save_torch
from sae_pipeline.runtime import run_stage, setup_torch
from sae_pipeline.sae import load_sae, sae_state
from sae_pipeline.sae_train import Readout, evaluate_split, train


def main(args):
    cfg = load_all(read_params(args.params))
    device = setup_torch(cfg["run"].device)
    acts = load_acts(load_npz(args.acts)).to(device)
    state = load_torch(args.start)
    start = load_sae(state).to(device)
    model = base.load_model(load_torch(args.base_model), load_json(args.base_card))
    readout = Readout.from_model(model.fc2, acts.shift, acts.scale).to(device)
    lam = load_json(args.calibration)["lambda"]
    sae, history = train(cfg["sae"], start, acts.train, lam, cfg["run"].seed, readout, state.get("history"))
    val = evaluate_split(sae, acts.val)
    save_torch(args.sae, sae_state(sae))
    save_json(args.metrics, {"lambda": lam, "steps": history[-1]["step"] if history else 0,
                             "final_loss": history[-1]["loss"] if history else None,
                             "l0_val": round(val["l0"], 4), "fvu_val": round(val["fvu"], 5)})
    save_csv(args.curve, history, ["step", "phase", "loss", "mse", "l0", "fvu", "kl", "dead_frac", "lambda", "lr"])
    print(f"val l0={val['l0']:.2f} fvu={val['fvu']:.4f}")


if __name__ == "__main__":
    run_stage(main, "acts", "start", "base-model", "base-card", "calibration", "sae", "metrics", "curve")
