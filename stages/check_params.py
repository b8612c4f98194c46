"""Stage check_params: validate the whole params file before any other stage runs, and write each site's resolved
SAE settings.

DVC deletes a stage's outputs before it runs the stage, so a bad value caught inside a stage has already cost that
stage's outputs. Every stage depends on this stage's output, so DVC runs this one first; it reads only params.yaml
(no torch, ~0.2 s) and fails with one line naming the key. Its marker never changes (``params: valid``), so passing
the check reruns nothing downstream; and its outputs are ``persist`` in dvc.yaml, so a failed check deletes neither.

``--site-params``: a folder per site with a YAML file for each of its SAE stages (``config.site_params``): the
effective settings of the site's SAE (train_sae.yaml) and of its ceiling and floor SAEs (control_sae.yaml), which
those stages read and depend on.
"""
import yaml

from sae_pipeline.config import check_params_file, site_params
from sae_pipeline.io import atomic_dir, write_text
from sae_pipeline.runtime import run_stage

HEADER = ("# {stage}@{site}'s settings, written by check_params from params.yaml (sae: with sites.{site}.sae on top;\n"
          "# the control SAEs with controls.sae, the floor's with sites.{site}.floor_sae last). Edit params.yaml.\n")


def main(args):
    cfg = check_params_file(args.params)
    with atomic_dir(args.site_params) as tmp:
        for site in cfg["sites"]:
            (tmp / site).mkdir()
            for stage, settings in site_params(cfg, site).items():
                text = yaml.safe_dump(settings, sort_keys=False, default_flow_style=None, width=120)
                (tmp / site / f"{stage}.yaml").write_text(HEADER.format(stage=stage, site=site) + text)
    write_text(args.out, "params: valid\n")


if __name__ == "__main__":
    run_stage(main, "out", "site-params")
