"""Stage index: plots/index.html, the offline page linking every model and site with its headline numbers, and
the per-model and per-site curves gathered into one CSV each (``series`` column) for `dvc plots show`."""
import os
import shutil

from sae_pipeline.config import load_all, read_params
from sae_pipeline.index_page import build, gather_csv
from sae_pipeline.io import atomic_dir, write_text
from sae_pipeline.runtime import run_stage


def main(args):
    cfg = load_all(read_params(args.params))
    models, sites = list(cfg["models"]), list(cfg["sites"])
    out_dir = os.path.dirname(os.path.abspath(args.out))
    write_text(args.out, build(models, sites, args.models, args.sites, os.path.relpath(args.dashboards, out_dir)))
    with atomic_dir(args.gathered) as tmp:
        for folder in args.curves:
            names = models if os.path.basename(folder) == "base_train" else sites
            (tmp / f"{os.path.basename(folder)}.csv").write_text(gather_csv(folder, names))
        # confusion matrices stay one file per model (one chart each), in this one output folder: DVC writes a
        # .gitignore into a folder that holds several stages' outputs, which `dvc plots show` would read as a plot
        (tmp / "confusion").mkdir()
        for m in models:
            shutil.copyfile(os.path.join(args.confusion, f"{m}.csv"), tmp / "confusion" / f"{m}.csv")


if __name__ == "__main__":
    import sys

    # --curves takes several folders: split them off before run_stage's one-value arguments
    i = sys.argv.index("--curves") if "--curves" in sys.argv else len(sys.argv)
    j = next((k for k in range(i + 1, len(sys.argv)) if sys.argv[k].startswith("--")), len(sys.argv))
    curves, sys.argv = sys.argv[i + 1:j], sys.argv[:i] + sys.argv[j:]

    def with_curves(args):
        args.curves = curves
        main(args)

    run_stage(with_curves, "models", "sites", "dashboards", "out", "confusion", "gathered")
