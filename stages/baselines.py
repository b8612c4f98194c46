"""Stage baselines: the interpretability metrics of what the SAE is compared against that does not depend on the
SAE (the site's own units, PCA, the dense probe). One per site; SAE experiments reuse it."""
from sae_pipeline.forkserver import handoff

handoff()  # the rest runs in a fork of a process that has imported torch (sae_pipeline/forkserver.py)

from sae_pipeline.analysis.run import baseline_families
from sae_pipeline.analysis.units import split_tensors
from sae_pipeline.config import load_all, read_params
from sae_pipeline.io import load_npz, save_json
from sae_pipeline.runtime import run_stage, setup_torch


def main(args):
    cfg = load_all(read_params(args.params))
    setup_torch("cpu")
    acts, data = load_npz(args.acts), load_npz(args.data)
    h, y = split_tensors(acts, cfg["sites"][args.site].site, data)
    out = baseline_families(h, y, cfg["analysis"])
    save_json(args.out, out)
    print({k: v.get("purity_mean", v.get("balanced_accuracy")) for k, v in out.items()})


if __name__ == "__main__":
    run_stage(main, "site", "acts", "data", "out")
