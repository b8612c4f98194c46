"""Sweep the SAE's arch x target L0 at one site through DVC's experiment queue, on one machine or split across
several. Each experiment sets the site's own overrides (``sites.<site>.sae.arch``, ``.target_actives``) and
reproduces ``analyze@<site>`` and what it needs: the site's SAE and its analysis. The stages that read every site
(the controls' SAEs of the site, universality, the index page) are left as the commit has them, which would cost
several times the SAE itself at each point; `dvc exp apply NAME && dvc repro` brings one experiment up to date.

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
import tempfile
import time

TARGETS = (5, 10, 20, 40)
ARCHS = ("jumprelu", "topk", "relu_l1")


def sh(*cmd, check=True, env=None):
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    print(f"  ({time.time() - t0:.1f} s)", flush=True)
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


STATUS_EVERY = 10.0  # seconds between `dvc queue status` calls while the queue runs (see run_queue)


def run_queue(site: str, pairs, jobs: int, extra: list[str]) -> list[str]:
    names = [f"sweep-{site}-{arch}-{t}" for arch, t in pairs]
    sh("dvc", "exp", "remove", *names, check=False)  # a rerun on the same commit replaces its own results

    def sets(arch, t):
        # `++`: set the key whether or not the site already has an sae override (Hydra's override grammar)
        return ["-S", f"++sites.{site}.sae.arch={arch}", "-S", f"++sites.{site}.sae.target_actives={t}",
                *[a for kv in extra for a in ("-S", kv)]]

    if jobs == 1:
        # One at a time needs no queue: `--temp` runs each experiment in its own copy of the repo, as a queued one
        # would, but in this process, without starting a Celery worker and waiting for it to go idle (~10 s).
        for (arch, t), name in zip(pairs, names):
            sh("dvc", "exp", "run", "--temp", "-n", name, *sets(arch, t), f"analyze@{site}")
        return names
    for (arch, t), name in zip(pairs, names):
        sh("dvc", "exp", "run", "--queue", "-n", name, *sets(arch, t), f"analyze@{site}")
    # no more workers than experiments (each is a Celery process that imports DVC and then idles); the cores
    # shared among them: two workers with two threads each on two cores thrash (seen: 10x slower)
    jobs = min(jobs, len(pairs))
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    print("+ dvc queue start -j", jobs, flush=True)
    # The workers stay in the background after `queue start` returns: its output goes to a file, because a pipe
    # would be held open by them and make this wait until the last one exits (~10 s after the queue drains).
    with tempfile.TemporaryFile("w+") as log:
        if subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], stdout=log, stderr=subprocess.STDOUT,
                          env={**os.environ, "SAE_PIPELINE_THREADS": threads, "OMP_NUM_THREADS": threads}).returncode:
            log.seek(0)
            sys.exit(f"`dvc queue start` failed:\n{log.read()[-2000:]}")
    t0, last_status, status = time.time(), 0.0, ""
    while True:
        # An experiment that succeeded has its git ref (refs/exps/.../NAME), which git lists in milliseconds; `dvc
        # queue status` costs ~2.6 s of CPU on these two cores, taken from the running experiments, so it is asked
        # only every STATUS_EVERY seconds (for failures), and once more when every ref is there.
        refs = subprocess.run(["git", "for-each-ref", "--format=%(refname:lstrip=-1)", "refs/exps"],
                              capture_output=True, text=True).stdout.split()
        if set(names) <= set(refs) or time.time() - last_status >= STATUS_EVERY:
            status, last_status = sh("dvc", "queue", "status").stdout, time.time()
            # Done when each of this sweep's experiments has finished, by its own line (a task killed earlier can
            # stay 'Running' in the status for good, seen with DVC 3.67, so the queue as a whole is not waited for).
            done = {n for ln in status.splitlines() for n in names
                    if n in ln.split() and ("Success" in ln.split() or "Failed" in ln.split())}
            if done == set(names):
                break
            print(f"{time.time() - t0:5.0f}s: {len(names) - len(done)} of {len(names)} not finished", flush=True)
        time.sleep(0.5)
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
    import yaml

    sites = yaml.safe_load(open("params.yaml"))["sites"]
    if args.site not in sites:  # before anything is queued (DVC would fail on the unknown stage in every experiment)
        sys.exit(f"--site {args.site}: not a site of params.yaml (sites: {', '.join(sites)})")
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
