"""The floor and ceiling that the universality scores are measured between (``controls``).

For each model, the same architecture from another seed (``controls.seed``): at its initialisation, untrained
(the **floor**: what a network of this shape shares with another one before learning anything, i.e. what the
pixels alone give), and trained by the same recipe (the **ceiling**: how far two trainings of the same
architecture agree; across seeds of one LLM SAE only 30-53% of latents recur, so 1 is not the ceiling). The
floor is the ceiling model's own initialisation. Each gets an SAE at every site of the model, by the site's
recipe (``controls.sae`` may make it cheaper: docs/universality.md says what that changes).
"""
from __future__ import annotations

import torch

from . import activations, base
from .config import ModelConfig
from .zoo import Classifier, build

KINDS = ("floor", "ceiling")


def control_models(cfg: ModelConfig, card: dict, x_train: torch.Tensor, y_train: torch.Tensor, seed: int,
                   device: torch.device) -> dict[str, Classifier]:
    """``{"floor": untrained, "ceiling": trained}``, both from ``seed`` (``base.train`` seeds the init the
    same way, so the floor is exactly where the ceiling's training started)."""
    torch.manual_seed(seed)
    floor = build(card).eval().requires_grad_(False)
    ceiling, _ = base.train(cfg, card, x_train, y_train, seed, device)
    return {"floor": floor, "ceiling": ceiling.cpu().requires_grad_(False)}


def control_base(cfg: ModelConfig, card: dict, data: dict, seed: int, device: torch.device) -> tuple[dict, dict]:
    """The control models' state dicts, their activations at every site on every split (``acts.npz`` layout,
    one per kind) and their metrics (test and val accuracy)."""
    prep = {s: base.preprocess(data[f"x_{s}"], card["input_mean"], card["input_std"]) for s in ("train", "val",
                                                                                                "test")}
    y = {s: torch.from_numpy(data[f"y_{s}"]) for s in ("train", "val", "test")}
    models = control_models(cfg, card, prep["train"], y["train"], seed, device)
    out, metrics = {}, {"seed": seed}
    for kind, model in models.items():
        out[kind] = {"state": model.state_dict(), "acts": activations.collect(model, card, data)}
        metrics[kind] = {f"{s}_acc": round((base.predict(model, prep[s]) == y[s]).float().mean().item(), 6)
                         for s in ("val", "test")}
    return out, metrics
