"""Stage control_sae (one per site): SAEs at the site of the floor and ceiling models (``controls``), by the
site's recipe with ``controls.sae`` on top (check_params's ``data/site_params/<site>/control_sae.yaml``;
``fit.fit_sae``, as train_sae), exported like the site's own.
With one site in all: empty outputs, no torch import (as control_base)."""
import os

from sae_pipeline.config import current_site_sae, load_all, read_params
from sae_pipeline.forkserver import handoff
from sae_pipeline.io import atomic_dir, save_json
from sae_pipeline.runtime import no_pair_to_compare, run_stage


def main(args):
    cfg = load_all(read_params(args.params))
    if no_pair_to_compare(cfg, args.out, args.metrics, args.site):
        return
    handoff()  # from here on in a fork of a process that has imported torch (sae_pipeline/forkserver.py)
    import torch

    from sae_pipeline import base
    from sae_pipeline.activations import load_acts
    from sae_pipeline.controls import KINDS
    from sae_pipeline.export import export
    from sae_pipeline.fit import fit_sae
    from sae_pipeline.io import load_npz, load_torch
    from sae_pipeline.runtime import setup_torch

    sae_cfgs = {kind: current_site_sae(cfg, args.site_params, args.site, kind) for kind in KINDS}
    device = setup_torch(cfg["run"].device)
    site_cfg = cfg["sites"][args.site]
    card = base.load_card(args.base_card)
    data = load_npz(args.data)
    x = {s: base.preprocess(data[f"x_{s}"], card["input_mean"], card["input_std"]) for s in ("train", "test")}
    metrics = {"seed": cfg["controls"].seed}
    with atomic_dir(args.out) as tmp:
        for kind in KINDS:
            acts = load_acts(load_npz(os.path.join(args.controls, f"{kind}_acts.npz")), site_cfg.site,
                             cfg["activations"])
            site = base.load_site(load_torch(os.path.join(args.controls, f"{kind}.pt")), card, site_cfg.site)
            res = fit_sae(sae_cfgs[kind], acts, site, x, torch.from_numpy(data["y_test"]),
                          cfg["controls"].seed, device)
            summary = {"model": card["name"], "hook": site_cfg.site, "d_in": site.width, "control": kind,
                       **res.summary}
            export(res.sae, acts.shift, acts.scale, tmp / kind, summary, f"{card['name']}-{kind}", site_cfg.site)
            metrics[kind] = {**summary, "calibration": res.calibration}
            print(f"{args.site} {kind}: test l0={summary['achieved_actives_test']:.2f} fvu={summary['fvu']:.4f} "
                  f"kl={summary['kl_logits']:.4f} dead={summary['dead_frac']:.3f}")
    save_json(args.metrics, metrics)


if __name__ == "__main__":
    run_stage(main, "site", "site-params", "controls", "base-card", "data", "out", "metrics")
