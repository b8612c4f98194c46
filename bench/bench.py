"""Benchmark on this machine: cold/no-op `dvc repro`, a tau experiment, and SAE training throughput.

    make bench      # prints a table and writes bench/results.json (restores the workspace afterwards)
"""
import json
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from sae_pipeline.activations import load_acts  # noqa: E402
from sae_pipeline.config import SAEConfig  # noqa: E402
from sae_pipeline.runtime import generator, setup_torch  # noqa: E402
from sae_pipeline.sae_train import Phase, new_sae, run_phase  # noqa: E402


def timed_repro(*args):
    """Wall time of a dvc command, and per-stage wall time from when each 'Running stage' line appears."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["dvc", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    marks = []
    for line in proc.stdout:
        m = re.match(r"Running stage '([a-z_]+)'", line)
        if m:
            marks.append((m.group(1), time.perf_counter()))
    if proc.wait() != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed")
    end = time.perf_counter()
    stages = {name: round((marks[i + 1][1] if i + 1 < len(marks) else end) - t, 2) for i, (name, t) in
              enumerate(marks)}
    return round(end - t0, 2), stages


def throughput(acts_path="data/activations/acts.npz", steps=600):
    """SAE training GFLOP/s vs torch.matmul at the same shapes, measured in the same process. A step has five
    (B,d)x(d,m)-sized matmuls, 10·B·d·m FLOPs: encode and decode forward; backward grad W_enc, grad f and
    grad W_dec (the input needs no gradient). The reference times exactly those five products."""
    setup_torch("cpu")
    x = load_acts(np.load(acts_path)).train
    cfg = SAEConfig()
    b, d, m = cfg.batch_size, x.shape[1], cfg.latents
    sae = new_sae(cfg, x, 0)
    epochs = steps * b / len(x)
    run_phase(sae, x, Phase("topk", epochs / 6), cfg, generator(0, 9))  # warm-up
    t0 = time.perf_counter()
    run_phase(sae, x, Phase("jumprelu", epochs, 0.1), cfg, generator(0, 9))
    train_s = time.perf_counter() - t0
    flops = 10 * b * d * m
    xb, w_enc, w_dec = torch.randn(b, d), torch.randn(d, m), torch.randn(m, d)
    f, g_out, g_pre = torch.randn(b, m), torch.randn(b, d), torch.randn(b, m)
    for _ in range(20):
        xb @ w_enc
    t0 = time.perf_counter()
    for _ in range(steps):
        xb @ w_enc, f @ w_dec, xb.T @ g_pre, g_out @ w_dec.T, f.T @ g_out
    mm_s = time.perf_counter() - t0
    train_gf, mm_gf = flops * steps / train_s / 1e9, flops * steps / mm_s / 1e9
    return {"steps": steps, "steps_per_s": round(steps / train_s, 1), "train_gflops": round(train_gf, 2),
            "matmul_gflops": round(mm_gf, 2), "ratio": round(train_gf / mm_gf, 3)}


def main():
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "torch": torch.__version__}
    results["cold_repro_s"], results["cold_stage_s"] = timed_repro("repro", "-f")
    results["noop_repro_s"], _ = timed_repro("repro")
    results["tau_experiment_s"], results["tau_experiment_stage_s"] = timed_repro("exp", "run", "-S", "sae.tau=0.05")
    subprocess.run("git checkout -q -- params.yaml dvc.lock metrics plots && dvc checkout -f -q", shell=True,
                   check=True)
    results["throughput"] = throughput()
    results["sae_stages_s"] = round(sum(results["cold_stage_s"].get(s, 0) for s in
                                        ("calibrate_lambda", "train_sae", "tune_theta", "analyze")), 2)
    targets = {"cold_repro_s": 45, "noop_repro_s": 3, "tau_experiment_s": 25}
    for k, v in targets.items():
        print(f"{k:20s} {results[k]:8.2f} s   target <= {v}")
    print(f"{'throughput ratio':20s} {results['throughput']['ratio']:8.3f}     target >= 0.5")
    print(json.dumps(results, indent=2))
    with open(os.path.join(os.path.dirname(__file__), "results.json"), "w") as fh:
        json.dump(results, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    main()
