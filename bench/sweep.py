"""Sweep the SAE's arch x target L0 at one site through DVC's experiment queue, on one machine or split across
several. Each experiment sets the site's own overrides (``sites.<site>.sae.arch``, ``.target_actives``), so only
that site's SAE side reruns.

    make sweep                                   # the whole grid at mlp-hidden, then docs/pareto.{png,csv}
    make sweep SWEEP_ARGS="--site vit-block4"    # the same at another site
    make sweep SWEEP_ARGS="--part 1/2 --push origin"   # machine A: every other experiment, pushed to git remote
    make sweep SWEEP_ARGS="--part 2/2 --push origin"   #   `origin` (refs) and the default DVC remote (data)
    make sweep SWEEP_ARGS="--collect origin"     # anywhere: pull every experiment of this commit, build the plot

Every part must start from the same commit (experiments are keyed by their base commit). --push runs
`dvc exp push --run-cache`, so the outputs and the run-cache go to the DVC remote; --collect runs `dvc exp pull`
and `bench/pareto.py`, which reads `dvc exp show --json` and runs no stage.
"""
import argparse
import itertools
import os
import subprocess
import sys
import time

TARGETS = (5, 10, 20, 40)
ARCHS = ("jumprelu", "topk", "relu_l1")


def sh(*cmd, check=True, env=None):
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        sys.exit(f"`{' '.join(cmd)}` failed:\n{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def grid(archs, targets, part: str | None) -> list[tuple[str, int]]:
    """The (arch, target) pairs of this part: part "i/n" takes every n-th pair starting at the i-th."""
    pairs = list(itertools.product(archs, targets))
    if not part:
        return pairs
    i, n = (int(v) for v in part.split("/"))
    if not 1 <= i <= n:
        sys.exit(f"--part must be i/n with 1 <= i <= n (got {part})")
    return pairs[i - 1::n]


def run_queue(site: str, pairs, jobs: int, extra: list[str]) -> list[str]:
    names = [f"sweep-{site}-{arch}-{t}" for arch, t in pairs]
    sh("dvc", "exp", "remove", *names, check=False)  # a rerun on the same commit replaces its own results
    for (arch, t), name in zip(pairs, names):
        # `++`: set the key whether or not the site already has an sae override (Hydra's override grammar)
        sh("dvc", "exp", "run", "--queue", "-n", name, "-S", f"++sites.{site}.sae.arch={arch}",
           "-S", f"++sites.{site}.sae.target_actives={t}", *[a for kv in extra for a in ("-S", kv)])
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
        time.sleep(5)
    print(status)
    failed = [ln for ln in status.splitlines() if " Failed " in ln and any(n in ln for n in names)]
    if failed:
        sys.exit("failed experiments (see `dvc queue logs NAME`):\n" + "\n".join(failed))
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", default="mlp-hidden", help="the site (a name under sites: in params.yaml)")
    ap.add_argument("--archs", nargs="+", default=list(ARCHS))
    ap.add_argument("--targets", nargs="+", type=int, default=list(TARGETS))
    ap.add_argument("--part", help="i/n: run only this share of the grid")
    ap.add_argument("--push", metavar="GIT_REMOTE", help="dvc exp push the results (and run-cache) there")
    ap.add_argument("--collect", metavar="GIT_REMOTE", help="dvc exp pull every experiment, then the Pareto plot")
    ap.add_argument("--set", action="append", default=[], help="extra KEY=VALUE for every experiment")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out-png", default="docs/pareto.png")
    ap.add_argument("--out-csv", default="docs/pareto.csv")
    args = ap.parse_args()
    pareto = [sys.executable, os.path.join(os.path.dirname(__file__), "pareto.py"), "--out-png", args.out_png,
              "--out-csv", args.out_csv, "--site", args.site, "--prefix", f"sweep-{args.site}-"]
    if args.collect:
        sh("dvc", "exp", "pull", "--run-cache", args.collect)
        subprocess.run(pareto, check=True)
        return
    names = run_queue(args.site, grid(args.archs, args.targets, args.part), args.jobs, args.set)
    if args.push:
        sh("dvc", "exp", "push", "--run-cache", args.push, *names)
        print(f"pushed {len(names)} experiments to {args.push}: {' '.join(names)}")
    if not args.part:
        subprocess.run(pareto, check=True)


if __name__ == "__main__":
    main()
