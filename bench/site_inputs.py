"""The committed run's inputs of one site, found through dvc.yaml (where the paths live) as train_sae reads them.

    from site_inputs import load
    inp = load("vit-block4")   # inp.acts (normalised), inp.site, inp.x (preprocessed images), inp.data, inp.cfg
"""
from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sae_pipeline import base  # noqa: E402
from sae_pipeline.activations import Acts, load_acts  # noqa: E402
from sae_pipeline.config import load_all, read_params, site_sae  # noqa: E402
from sae_pipeline.zoo import Site  # noqa: E402


def stage_args(stage: str, key: str) -> dict[str, str]:
    """``--name value`` pairs of a foreach stage's command in dvc.yaml, resolved for ``key``."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["do"]
    item = read_params(ROOT / "params.yaml")["models" if stage == "train_base" else "sites"][key]
    cmd = re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m.group(1)]), dvc["cmd"].replace("${key}", key))
    words = shlex.split(cmd)
    return {w[2:]: v for w, v in zip(words, words[1:]) if w.startswith("--")}


@dataclass
class SiteInputs:
    name: str
    cfg: dict  # load_all(params.yaml)
    acts: Acts
    site: Site
    card: dict
    data: dict
    x: dict[str, torch.Tensor]  # preprocessed images of every split

    @property
    def sae_cfg(self):
        return site_sae(self.cfg, self.name)


def load(name: str = "mlp-hidden", params: dict | None = None) -> SiteInputs:
    cfg = load_all(params or read_params(ROOT / "params.yaml"))
    a = {k: str(ROOT / v) if "/" in v else v for k, v in stage_args("train_sae", name).items()}
    card = base.load_card(a["base-card"])
    site = base.load_site(torch.load(a["base-model"], weights_only=True), card, cfg["sites"][name].site)
    data = dict(np.load(a["data"]))
    x = {s: base.preprocess(data[f"x_{s}"], card["input_mean"], card["input_std"]) for s in ("train", "val", "test")}
    acts = load_acts(np.load(a["acts"]), cfg["sites"][name].site, cfg["activations"])
    return SiteInputs(name, cfg, acts, site, card, data, x)
