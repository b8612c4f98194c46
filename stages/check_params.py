"""Stage check_params: validate the whole params file before any other stage runs.

DVC deletes a stage's outputs before it runs the stage, so a bad value caught inside a stage has already cost that
stage's outputs. Every stage depends on this stage's output, so DVC runs this one first; it reads only params.yaml
(no torch, ~0.2 s) and fails with one line naming the key. Its output never changes (``params: valid``), so passing
the check reruns nothing downstream; and it is ``persist`` in dvc.yaml, so a failed check does not delete it.
"""
from sae_pipeline.config import check_params_file
from sae_pipeline.io import write_text
from sae_pipeline.runtime import run_stage


def main(args):
    check_params_file(args.params)
    write_text(args.out, "params: valid\n")


if __name__ == "__main__":
    run_stage(main, "out")
