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
        for folder, names in ((args.base_train, models), (args.sae_train, sites), (args.calibration, sites)):
            (tmp / f"{os.path.basename(folder)}.csv").write_text(gather_csv(folder, names))
        # confusion matrices stay one file per model (one chart each), in this one output folder: DVC writes a
        # .gitignore into a folder that holds several stages' outputs, which `dvc plots show` would read as a plot
        (tmp / "confusion").mkdir()
        for m in models:
            shutil.copyfile(os.path.join(args.confusion, f"{m}.csv"), tmp / "confusion" / f"{m}.csv")


if __name__ == "__main__":
    run_stage(main, "models", "sites", "dashboards", "out", "base-train", "sae-train", "calibration", "confusion",
              "gathered")
