"""Stage shared_dictionary: one sparse code over every site (``shared.train_shared``), its cross-reconstruction,
firing entropy, co-firing and shared/exclusive shares on the test images, each next to the same dictionary
trained on mismatched images (``shared.measure``). With one site there is nothing to share: empty outputs, no
torch import."""
import os

from sae_pipeline.config import load_all, read_params
from sae_pipeline.forkserver import handoff
from sae_pipeline.io import atomic_dir, save_csv, save_json
from sae_pipeline.runtime import run_stage

CROSS_COLUMNS = ["series", "source", "target", "r2", "fvu", "kl"]
ENTROPY_COLUMNS = ["series", "entropy", "share"]


def main(args):
    cfg = load_all(read_params(args.params))
    if len(cfg["sites"]) < 2:
        save_json(args.metrics, {"skipped": "one site: nothing to share"})
        save_csv(args.latents, [], ["latent"])
        with atomic_dir(args.model):
            pass
        with atomic_dir(args.plots) as tmp:
            save_csv(tmp / "cross_reconstruction.csv", [], CROSS_COLUMNS)
            save_csv(tmp / "firing_entropy.csv", [], ENTROPY_COLUMNS)
        print("one site: no shared dictionary")
        return
    handoff()  # from here on in a fork of a process that has imported torch (sae_pipeline/forkserver.py)
    import torch

    from sae_pipeline import base, shared
    from sae_pipeline.activations import load_acts
    from sae_pipeline.io import load_npz, load_torch, save_torch
    from sae_pipeline.runtime import generator, setup_torch

    device = setup_torch(cfg["run"].device)
    data, sc = load_npz(args.data), cfg["shared"]
    train, evals, npz = {}, {}, {}
    for name, s in cfg["sites"].items():
        if s.model not in npz:
            npz[s.model] = load_npz(os.path.join(args.acts, s.model, "acts.npz"))
        acts = load_acts(npz[s.model], s.site, cfg["activations"])
        card = base.load_card(os.path.join(args.models, s.model, "base.json"))
        site = base.load_site(load_torch(os.path.join(args.models, s.model, "base.pt")), card, s.site)
        ctx = site.collect(base.preprocess(data["x_test"], card["input_mean"], card["input_std"]))[1]
        train[name] = acts.train
        evals[name] = shared.SiteEval(acts.test, lambda z, site=site, acts=acts, ctx=ctx:
                                      site.logits(acts.to_hidden(z), ctx))
    fits = {}
    for kind, mismatched, offset in (("shared", False, 400), ("null", True, 401)):
        on = {k: v.to(device) for k, v in train.items()}
        model, history = shared.train_shared(on, sc.latents, sc.k, sc.mode, sc.epochs, sc.batch_size, sc.lr,
                                             generator(cfg["run"].seed, offset), mismatched=mismatched)
        fits[kind] = (model.cpu(), *shared.measure(model.cpu(), evals, sc.mode))
    model, metrics, rows = fits["shared"]
    null = fits["null"][1]
    metrics["null_mismatched_images"] = null
    with atomic_dir(args.model) as tmp:
        for kind, (m, _, _) in fits.items():
            save_torch(tmp / f"{kind}.pt", {"sites": m.names, "k": m.k, "mode": sc.mode, "state": m.state_dict()})
    save_json(args.metrics, metrics)
    save_csv(args.latents, rows)
    with atomic_dir(args.plots) as tmp:
        save_csv(tmp / "cross_reconstruction.csv", [
            {"series": kind, "source": i, "target": j, "r2": round(1 - v["fvu"], 6), "fvu": v["fvu"],
             "kl": v.get("kl")} for kind, m in (("shared", metrics), ("null", null))
            for i, row in m["cross_reconstruction"].items() for j, v in row.items()], CROSS_COLUMNS)
        save_csv(tmp / "firing_entropy.csv", [{"series": kind, "entropy": c, "share": n}
                                               for kind, (_, _, r) in fits.items()
                                               for c, n in shared.entropy_hist(r)], ENTROPY_COLUMNS)
    print(f"shared dictionary ({sc.mode}, {sc.latents} latents, k={sc.k}): cross-reconstruction FVU off the "
          f"diagonal {metrics['cross_fvu_offdiag_mean']:.3f} (mismatched images {null['cross_fvu_offdiag_mean']:.3f});"
          f" co-firing IoU {metrics['cofiring_iou_mean']:.3f} ({null['cofiring_iou_mean']:.3f}); shared by every site "
          f"{metrics['share_shared_by_every_site']:.3f} ({null['share_shared_by_every_site']:.3f}), exclusive "
          f"{metrics['share_exclusive']:.3f} ({null['share_exclusive']:.3f})")


if __name__ == "__main__":
    run_stage(main, "acts", "models", "data", "model", "latents", "metrics", "plots")
