"""Stage train_base (one per model): the classifier, its model card, metrics and plots, and its activations at
every site on every split (one pass of inference: a stage of its own would cost more in start-up than it does)."""
from sae_pipeline.forkserver import handoff

handoff()  # the rest runs in a fork of a process that has imported torch (sae_pipeline/forkserver.py)

import torch

from sae_pipeline import activations, base
from sae_pipeline.config import load_all, read_params
from sae_pipeline.io import load_npz, save_csv, save_json, save_npz, save_torch
from sae_pipeline.runtime import run_stage, setup_torch


def main(args):
    cfg = load_all(read_params(args.params))
    device = setup_torch(cfg["run"].device)
    data = load_npz(args.data)
    mean, std = float(data["x_train"].mean() / 255), float(data["x_train"].std() / 255)
    prep = lambda split: base.preprocess(data[f"x_{split}"], mean, std)  # noqa: E731
    label = lambda split: torch.from_numpy(data[f"y_{split}"])  # noqa: E731
    model_cfg = cfg["models"][args.name]
    card = base.model_card(args.name, model_cfg, mean, std)
    model, history = base.train(model_cfg, card, prep("train"), label("train"), cfg["run"].seed, device)
    model = model.cpu()
    metrics, confusion = base.evaluate(model, prep("val"), label("val"), prep("test"), label("test"),
                                       history[-1]["loss"])
    acts = activations.collect(model, card, data)
    save_torch(args.model, model.state_dict())
    save_json(args.card, card)
    save_json(args.metrics, metrics)
    save_csv(args.curve, history)
    save_csv(args.confusion, confusion)
    save_npz(args.acts, **acts)
    print(f"{args.name}: test_acc={metrics['test_acc']:.4f} val_acc={metrics['val_acc']:.4f} sites="
          + ", ".join(f"{s} ({v['width']})" for s, v in card["sites"].items()))


if __name__ == "__main__":
    run_stage(main, "name", "data", "model", "card", "metrics", "curve", "confusion", "acts")
