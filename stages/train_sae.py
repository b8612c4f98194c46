"""Stage train_sae: the SAE on train_base's activations, λ calibrated, θ tuned, its test summary and a SAELens
export (``fit.fit_sae``)."""
import torch

from sae_pipeline import base
from sae_pipeline.activations import load_acts
from sae_pipeline.config import load_all, read_params
from sae_pipeline.export import export
from sae_pipeline.fit import fit_sae
from sae_pipeline.io import load_npz, load_torch, save_csv, save_json, save_torch
from sae_pipeline.runtime import run_stage, setup_torch
from sae_pipeline.sae import sae_state


def main(args):
    cfg = load_all(read_params(args.params))
    device = setup_torch(cfg["run"].device)
    acts = load_acts(load_npz(args.acts), cfg["activations"])
    model = base.load_model(load_torch(args.base_model), base.load_card(args.base_card))
    y_test = torch.from_numpy(load_npz(args.data)["y_test"])
    res = fit_sae(cfg["sae"], acts, model, y_test, cfg["run"].seed, device)
    save_torch(args.sae, sae_state(res.sae))
    export(res.sae, acts.shift, acts.scale, args.export, res.summary)
    save_json(args.calibration, res.calibration)
    save_csv(args.calibration_plot, res.calibration["probes"], ["probe", "lambda", "l0", "fvu", "epochs"])
    save_json(args.train_metrics, res.train_metrics)
    save_csv(args.curve, res.history, ["step", "phase", "loss", "mse", "l0", "fvu", "kl", "dead_frac", "lambda", "lr"])
    save_json(args.tuning, res.tuning)
    save_json(args.metrics, res.summary)
    s, c = res.summary, res.calibration
    print(f"lambda={c['lambda']:.4g} ({len(c['probes'])} probes, converged={c['converged']}); test "
          f"l0={s['achieved_actives_test']:.2f} fvu={s['fvu']:.4f} kl={s['kl_logits']:.4f} "
          f"delta_acc={s['delta_acc_jumprelu']:.4f}")


if __name__ == "__main__":
    run_stage(main, "acts", "base-model", "base-card", "data", "sae", "export", "calibration", "calibration-plot",
              "train-metrics", "curve", "tuning", "metrics")
