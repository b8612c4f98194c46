"""Stage control_base (one per model): the universality floor and ceiling models (``controls``): the model's
architecture from ``controls.seed``, untrained and trained, with their activations at every site. With one site
in all there is nothing to compare: empty outputs, no torch import."""
import os

from sae_pipeline.config import load_all, read_params
from sae_pipeline.forkserver import handoff
from sae_pipeline.io import atomic_dir, save_json
from sae_pipeline.runtime import no_pair_to_compare, run_stage


def main(args):
    cfg = load_all(read_params(args.params))
    if no_pair_to_compare(cfg, args.out, args.metrics, args.name):
        return
    handoff()  # from here on in a fork of a process that has imported torch (sae_pipeline/forkserver.py)
    from sae_pipeline import base
    from sae_pipeline.controls import control_base
    from sae_pipeline.io import load_npz, save_npz, save_torch
    from sae_pipeline.runtime import setup_torch

    device = setup_torch(cfg["run"].device)
    data = load_npz(args.data)
    card = base.load_card(args.card)
    out, metrics = control_base(cfg["models"][args.name], card, data, cfg["controls"].seed, device)
    with atomic_dir(args.out) as tmp:
        for kind, v in out.items():
            save_torch(tmp / f"{kind}.pt", v["state"])
            save_npz(tmp / f"{kind}_acts.npz", **v["acts"])
    save_json(args.metrics, metrics)
    print(f"{args.name}: floor test_acc={metrics['floor']['test_acc']:.4f}, ceiling (seed {metrics['seed']}) "
          f"test_acc={metrics['ceiling']['test_acc']:.4f} -> {os.path.relpath(args.out)}")


if __name__ == "__main__":
    run_stage(main, "name", "data", "card", "out", "metrics")
