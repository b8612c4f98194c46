"""Stage warm_start: the SAE's starting point, which the λ probes of calibrate_lambda and train_sae both start from.

The seeded initialisation (every arch; the default JumpReLU recipe trains from it). With ``sae.recipe=warmstart``
a JumpReLU first trains ``sae.warmstart_epochs`` of TopK(k=target) and converts to one global θ at the target L0.
A stage of its own because none of this depends on the STE's params (``sae.tau``, the λ search):
``dvc exp run -S sae.tau=...`` reuses it from the cache.
"""

from sae_pipeline.activations import load_acts
from sae_pipeline.config import load_all, read_params
from sae_pipeline.io import load_npz, save_torch
from sae_pipeline.runtime import run_stage, setup_torch
from sae_pipeline.sae import sae_state
from sae_pipeline.sae_train import evaluate_split, starting_point


def main(args):
    cfg = load_all(read_params(args.params))
    device = setup_torch(cfg["run"].device)
    acts = load_acts(load_npz(args.acts)).to(device)
    history = []  # the warm start's training curve, if it trains: train_sae's curve continues it
    start = starting_point(cfg["sae"], acts.train, cfg["run"].seed, history)
    save_torch(args.start, {**sae_state(start), "history": history})
    val = evaluate_split(start.eval(), acts.val)
    print(f"starting point ({start.activation}): val l0={val['l0']:.2f} fvu={val['fvu']:.4f}")


if __name__ == "__main__":
    run_stage(main, "acts", "start")
