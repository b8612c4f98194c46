"""Stage prepare_data: full MNIST -> data/prepared/mnist.npz (uint8 images, int64 labels, train/val/test)."""
from sae_pipeline.config import load_all, read_params
from sae_pipeline.data import prepare
from sae_pipeline.io import save_npz
from sae_pipeline.runtime import run_stage


def main(args):
    cfg = load_all(read_params(args.params))
    arrays = prepare(cfg["data"], cfg["run"].seed)
    save_npz(args.out, **arrays)
    print({k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
    run_stage(main, "out")
