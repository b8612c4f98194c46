"""Sweep sae.target_actives x sae.arch through DVC's experiment queue, then write the Pareto plot and table.

    make sweep            # queues 12 experiments, runs them 2 at a time, writes plots/pareto.{png,csv}
"""
import itertools
import os
import subprocess
import sys
import time

TARGETS = (5, 10, 20, 40)
ARCHS = ("jumprelu", "topk", "relu_l1")


def sh(*cmd, check=True, env=None):
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, env=env)


def main(jobs: int = 2):
    names = [f"sweep-{arch}-{t}" for arch, t in itertools.product(ARCHS, TARGETS)]
    sh("dvc", "exp", "remove", *names, check=False)  # a rerun on the same commit replaces its own results
    for arch, t in itertools.product(ARCHS, TARGETS):
        sh("dvc", "exp", "run", "--queue", "-n", f"sweep-{arch}-{t}", "-S", f"sae.arch={arch}",
           "-S", f"sae.target_actives={t}")
    # one torch thread per worker: two workers with two threads each on two cores thrash (seen: 10x slower)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    sh("dvc", "queue", "start", "-j", str(jobs),
       env={**os.environ, "SAE_PIPELINE_THREADS": threads, "OMP_NUM_THREADS": threads})
    t0 = time.time()
    while True:
        status = sh("dvc", "queue", "status").stdout
        queued = [ln for ln in status.splitlines() if " Queued " in ln]
        # A task killed earlier can stay 'Running' in the status for good (seen with DVC 3.67), so the
        # workers' own line decides when the queue is drained.
        if not queued and "Worker status: 0 active" in status:
            break
        print(f"{time.time() - t0:5.0f}s: {len(queued)} queued", flush=True)
        time.sleep(10)
    print(status)
    failed = [ln for ln in status.splitlines() if " Failed " in ln]
    if failed:
        print("failed experiments (see `dvc queue logs NAME`):", *failed, sep="\n", file=sys.stderr)
    subprocess.run([sys.executable, "bench/pareto.py"], check=True)


if __name__ == "__main__":
    main()
