"""Stage universality: do the sites' SAEs find the same features? Every pair of sites on the shared test images
(``universality.analyse``): matching of latents, raw units and random dictionaries with shuffled-image nulls, CKA,
geometry of paired decoders, meaning of matched pairs against random pairs; and a page linking every latent to
its partners' cards in the other sites' browsers (``universality_page``)."""
import json
import os

from sae_pipeline.config import load_all, read_params
from sae_pipeline.forkserver import handoff
from sae_pipeline.io import atomic_dir, save_csv, save_json, write_text
from sae_pipeline.runtime import run_stage
from sae_pipeline.universality_page import page_html

PAIR_COLUMNS = ["site_a", "latent_a", "site_b", "latent_b", "rho"]
HIST_COLUMNS = ["series", "rho", "share"]
U_COLUMNS = ["series", "pair", "measure", "U"]


def main(args):
    cfg = load_all(read_params(args.params))
    dashboards = os.path.relpath(args.dashboards, args.plots)
    if len(cfg["sites"]) < 2:  # nothing to compare (e.g. one model's configuration): no torch import, no loading
        save_json(args.metrics, {"split": "test", "pairs": {}})
        save_csv(args.pairs, [], PAIR_COLUMNS)
        with atomic_dir(args.plots) as tmp:
            save_csv(tmp / "best_partner.csv", [], HIST_COLUMNS)
            save_csv(tmp / "u_score.csv", [], U_COLUMNS)
            for s in cfg["sites"]:
                write_text(tmp / "partners" / f"{s}.js", "window.PARTNERS = {};\n")
            (tmp / "index.html").write_text(page_html(list(cfg["sites"]), {}, {s: {} for s in cfg["sites"]},
                                                      dashboards))
        print("one site: no pairs to compare")
        return
    handoff()  # from here on in a fork of a process that has imported torch (sae_pipeline/forkserver.py)
    import torch

    from sae_pipeline import universality
    from sae_pipeline.controls import KINDS
    from sae_pipeline.analysis.units import encode_chunks, random_units, split_tensors
    from sae_pipeline.export import sae_from_export
    from sae_pipeline.io import load_json, load_npz
    from sae_pipeline.runtime import generator, setup_torch

    setup_torch("cpu")
    data = load_npz(args.data)
    sites, acts, controls = [], {}, {}
    for name, sc in cfg["sites"].items():
        if sc.model not in acts:
            acts[sc.model] = load_npz(os.path.join(args.acts, sc.model, "acts.npz"))
        h, _ = split_tensors(acts[sc.model], sc.site, data)
        sae = sae_from_export(os.path.join(args.sae, name, "saelens"))
        codes = {s: encode_chunks(sae, h[s]) for s in ("train", "test")}
        # its thresholds from every 5th training row: a null, rate-matched within a fraction of a percent
        sub = {"train": h["train"][::5], "val": h["val"][:1], "test": h["test"]}
        rand = random_units(sub, (codes["train"] > 0).double().mean(0), generator(cfg["run"].seed, 102))
        latents = load_json(os.path.join(args.analysis, name, "latents.json"), ("latents",))["latents"]
        sites.append(universality.SiteUnits(name, codes["test"], h["test"], rand.acts["test"], sae.W_dec.detach(),
                                            latents))
        for kind in KINDS:  # the floor and ceiling models' SAEs at this site (control_base, control_sae)
            h_c, _ = split_tensors(load_npz(os.path.join(args.controls, sc.model, f"{kind}_acts.npz")), sc.site, data)
            sae_c = sae_from_export(os.path.join(args.control_sae, name, kind))
            controls[(name, kind)] = universality.Control(encode_chunks(sae_c, h_c["test"]), h_c["test"])
    metrics, rows, hist, partners = universality.analyse(sites, torch.from_numpy(data["x_test"]),
                                                         generator(cfg["run"].seed, 300), controls)
    save_json(args.metrics, metrics)
    save_csv(args.pairs, rows, PAIR_COLUMNS)
    with atomic_dir(args.plots) as tmp:
        save_csv(tmp / "best_partner.csv", hist, HIST_COLUMNS)
        n_test = {s.name: {r["latent"]: r["n_test"] for r in s.latents} for s in sites}
        scores = {k: m["universality_score"] for k, m in metrics["pairs"].items() if "universality_score" in m}
        (tmp / "index.html").write_text(page_html([s.name for s in sites], partners, n_test, dashboards, scores))
        for s in sites:  # each latent's partners, for its card in the site's browser (browser.js, partnersBlock)
            card = {}
            for o in sites:
                for u, (j, r) in (partners[(s.name, o.name)].items() if o is not s else ()):
                    card.setdefault(u, []).append([o.name, j, r])
            write_text(tmp / "partners" / f"{s.name}.js", "window.PARTNERS = " + json.dumps(card) + ";\n")
        save_csv(tmp / "u_score.csv", [{"series": f"{k} {m}", "pair": k, "measure": m, "U": v["U"]}
                                       for k, sc in scores.items() for m, v in sc.items()], U_COLUMNS)
    for key, m in metrics["pairs"].items():
        print(f"{key}: Hungarian mean ρ {m['sae']['hungarian_mean']:.3f} (shuffled "
              f"{m['sae']['null_shuffled']['hungarian_mean']:.3f}, raw units {m['raw']['hungarian_mean']:.3f}, random "
              f"dictionaries {m['random_dictionary']['hungarian_mean']:.3f}); mutual ρ≥0.5 "
              f"{m['sae']['mutual_nn_rho_0.5']}; CKA raw {m['cka_raw']:.3f} codes {m['cka_sae']:.3f}")
        u = m["universality_score"]["sae_hungarian_mean"]
        print(f"  U (Hungarian mean ρ) {u['U']} {u['U_ci95']}: floor {u['floor']:.3f}, ceiling {u['ceiling']:.3f}")


if __name__ == "__main__":
    run_stage(main, "acts", "sae", "analysis", "controls", "control-sae", "data", "metrics", "pairs", "plots",
              "dashboards")
