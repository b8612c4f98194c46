"""Stage collect_activations: the base model's hidden activations (train/val/test) and the SAE's normaliser."""

from sae_pipeline import activations, base
from sae_pipeline.config import load_all, read_params
from sae_pipeline.io import load_json, load_npz, load_torch, save_npz
from sae_pipeline.runtime import run_stage, setup_torch


def main(args):
    cfg = load_all(read_params(args.params))
    setup_torch("cpu")  # one pass of inference; the CPU is faster than a device round trip at this size
    card = load_json(args.card)
    model = base.load_model(load_torch(args.model), card)
    act_cfg = cfg["activations"]
    out = activations.collect(model, card, load_npz(args.data), act_cfg.normalize_z, act_cfg.std_floor)
    save_npz(args.out, **out)
    print({k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    run_stage(main, "data", "model", "card", "out")
