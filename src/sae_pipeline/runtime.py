"""Process-level set-up shared by the stages: threads, determinism, device, and clean failure.

torch is imported inside the functions that need it: prepare_data never touches torch, and importing it costs
about 1.5 s of every stage's start-up.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Callable

from .config import ConfigError

if TYPE_CHECKING:
    import torch


def setup_torch(device: str = "auto") -> "torch.device":
    """Deterministic kernels where supported; fixed thread count so CPU reductions repeat bit for bit."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        # The same switch without the public wrapper, which also imports torch._inductor's config (1.7 s of every
        # stage's start-up in torch 2.14) only to set a flag for compiled code, which this project never compiles.
        torch._C._set_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(int(os.environ.get("SAE_PIPELINE_THREADS", min(2, os.cpu_count() or 1))))
    # Flush subnormal floats to zero on the CPU. Adam's moments of latents that stop getting gradients decay by
    # beta per step into the subnormal range (below 1.2e-38 after ~800 steps), and x86 arithmetic on subnormals
    # is many times slower: a long SAE run slowed from ~570 to ~370 steps/s because of it (bench). Values that
    # small are below float32 resolution for every parameter update here.
    torch.set_flush_denormal(True)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device must be auto or cpu on a machine without CUDA (got 'cuda')")
        # cuBLAS needs this for deterministic matmuls (PyTorch reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.device(device)


def generator(seed: int, offset: int = 0) -> "torch.Generator":
    """An explicit CPU generator: each use gets its own stream, so adding a draw elsewhere changes nothing here."""
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + offset)


def no_pair_to_compare(cfg: dict, out_dir: str, metrics: str, what: str) -> bool:
    """The control stages with one site in all: nothing to compare, so an empty output folder and a metrics file
    that says why, without importing torch. True when it wrote them."""
    from .io import atomic_dir, save_json

    if len(cfg["sites"]) >= 2:
        return False
    with atomic_dir(out_dir):
        pass
    save_json(metrics, {"seed": cfg["controls"].seed, "skipped": "one site: no pair to compare"})
    print(f"{what}: one site, no pair to compare: nothing written")
    return True


class StageError(RuntimeError):
    """A failure with a message for the user (what failed and what to do); exits non-zero without a traceback."""


def run_stage(main: Callable[[argparse.Namespace], None], *args: str) -> None:
    """Parse ``--params`` plus the stage's path arguments, run ``main``, turn known errors into a clean exit."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    for a in args:
        parser.add_argument(f"--{a}", required=True)
    ns = parser.parse_args()
    try:
        main(ns)
    except ConfigError as e:
        print(f"error: bad parameter in {e.source or ns.params}: {e}", file=sys.stderr)
        sys.exit(2)
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except PermissionError as e:
        print(f"error: cannot write {e.filename}: {e.strerror}; make its folder writable and rerun", file=sys.stderr)
        sys.exit(1)
