"""Speed, side by side with a reference commit: this machine's figures are only comparable as ratios measured
in one session (the shared 2-core VMs drift by up to ~1.5x between quiet and busy periods).

    make bench                                   # HEAD against the previous release, 2 alternating rounds
    make bench BENCH_ARGS="--ref d9c4f9c --rounds 3 --tests"   # also `make test` in both (long)
    make bench BENCH_ARGS="--tests-only --rounds 1"            # only the test suites -> results_tests.json
    python bench/bench.py --throughput           # only the SAE step against its matmul reference

Each round runs, in fresh clones of both commits and alternating which goes first: a cold `dvc repro -f`
(per-stage wall time from DVC's "Running stage" lines), a no-op `dvc repro`, and `dvc exp run -S sae.tau=0.05`
with the run-cache cleared (then the workspace is reset); with --tests, `pytest -q` in each clone. Both clones
use this venv. Prints medians and HEAD/ref ratios and writes bench/results.json; then the SAE training step of
HEAD against the five matmuls it must do, in a fresh process as the stages run it.
"""
import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REF = "d9c4f9c"  # the previous release (issue 17's baseline)
# `make reset`, also for a ref without it; --allow-missing: a --head-targets clone has only its subset's outputs
# (and what git tracks in data/: check_params's settings, which a τ experiment rewrites)
RESET = "f=\"params.yaml dvc.lock metrics $(git ls-files -- data)\" && git rm -r -q --cached $f && git checkout HEAD -- $f " \
        "&& dvc checkout -f -q --allow-missing && git clean -fdq metrics plots"


# DVC's usage analytics off: each DVC command would otherwise spawn a process that tries to send a report (no
# network here) and leave its temp file in /tmp, during the timed runs of both commits
ENV = {**os.environ, "TQDM_DISABLE": "1", "DVC_NO_ANALYTICS": "1"}


def sh(cmd, cwd, check=True):
    proc = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True,
                          env=ENV)
    if check and proc.returncode != 0:
        sys.exit(f"`{cmd}` failed in {cwd}:\n{(proc.stderr or proc.stdout)[-2000:]}")
    return proc


def timed(cmd, cwd, check=True):
    """Wall time of a command, and per-stage wall time from when each 'Running stage' line appears. A failure
    stops the bench, or with ``check=False`` (the test suites: a flaky test of the reference still timed its
    whole suite) is printed and its time kept; the third value says whether it passed."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV)
    marks, tail = [], []
    for line in proc.stdout:
        tail = (tail + [line])[-20:]
        m = re.search(r"Running stage '([a-z_@\-0-9]+)'", line)
        if m:
            marks.append((m.group(1), time.perf_counter()))
    if proc.wait() != 0:
        if check:
            sys.exit(f"`{cmd}` failed in {cwd}:\n{''.join(tail)}")
        print(f"`{cmd}` failed in {cwd} (its time is kept, marked failed):\n{''.join(tail)}", flush=True)
    end = time.perf_counter()
    stages = {name: round((marks[i + 1][1] if i + 1 < len(marks) else end) - t, 2) for i, (name, t) in
              enumerate(marks)}
    return round(end - t0, 2), stages, proc.returncode == 0


def clone(rev, dest):
    sh(f"git clone -q {ROOT} {dest} && git -C {dest} checkout -q {rev}", ROOT)
    return dest


def one_round(path: Path, tests: bool, dag: bool = True, targets: str = "") -> dict:
    out = {}
    if dag:
        out.update(dag_round(path, targets))
    if tests:
        out["test_s"], _, passed = timed(test_command(path), path, check=False)
        if not passed:
            out["test_failed"] = True
    return out


def dag_round(path: Path, targets: str = "") -> dict:
    """``targets``: the stages every command is limited to, with what is upstream of them (`dvc repro -f` forces
    those too); e.g. ``analyze@mlp-hidden``: the MLP-only subset."""
    out = {}
    out["cold_repro_s"], out["cold_stage_s"], _ = timed(f"dvc repro -f {targets}", path)
    out["noop_repro_s"], _, _ = timed(f"dvc repro {targets}", path)
    shutil.rmtree(path / ".dvc/cache/runs", ignore_errors=True)  # a first run of the experiment, not a restore
    out["tau_experiment_s"], out["tau_experiment_stage_s"], _ = timed(f"dvc exp run -S sae.tau=0.05 {targets}",
                                                                       path)
    sh(RESET, path)
    return out


def test_command(path: Path) -> str:
    """The clone's own `make test` recipe (the README's command), run with this venv's python first on PATH and
    the clone's src/ first on the import path."""
    lines = (path / "Makefile").read_text().splitlines()
    recipe = lines[lines.index(next(ln for ln in lines if ln.startswith("test:"))) + 1].strip()
    # PYTHONPATH: the tests import the clone's own library, not the editable install of this checkout
    return f"PATH={Path(sys.executable).parent}:$PATH PYTHONPATH={path / 'src'} {recipe} -p no:cacheprovider"


def median_of(rounds: list[dict], key: str):
    vals = [r[key] for r in rounds if key in r]
    return round(statistics.median(vals), 2) if vals else None


def only_model(path: Path, model: str) -> None:
    """Keep one model and its sites in a clone's params.yaml (committed there): e.g. the MLP-only configuration
    of the zoo, against a single-model reference."""
    import yaml

    params = yaml.safe_load((path / "params.yaml").read_text())
    params["models"] = {model: params["models"][model]}
    params["sites"] = {k: v for k, v in params["sites"].items() if v["model"] == model}
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(f"git -c user.name=bench -c user.email=bench@localhost commit -q -am 'bench: only {model}'", path)


def side_by_side(ref: str, rounds: int, tests: bool, dag: bool = True, head_only: str = "",
                 head_targets: str = "") -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="sae-bench-"))
    clones = {"head": clone("HEAD", tmp / "head"), "ref": clone(ref, tmp / "ref")}
    targets = {"head": head_targets, "ref": ""}
    if head_only:
        only_model(clones["head"], head_only)
    if (ROOT / ".dvc/cache/files").is_dir():
        # HEAD's outputs from this checkout's cache (hard links: DVC never writes a cache object in place), where
        # it has them (after `make repro` here): the untimed first run below then computes only what is missing
        # (the zoo's takes ~10 min otherwise); and `dvc exp run` on some targets commits every stage's outputs,
        # so they must be in the cache
        sh(f"mkdir -p .dvc/cache && cp -al {ROOT}/.dvc/cache/files .dvc/cache/ && (dvc checkout -q || true)",
           clones["head"])
    for name, path in clones.items() if dag else ():  # outputs in place first (the data download, caches),
        # untimed, and committed in the clone: the reset after each experiment goes back to this machine's outputs,
        # which are in its cache (a commit's dvc.lock from another CPU type names outputs this cache never had); the
        # test suites build their own projects, so --tests-only skips it
        sh(f"dvc repro -q {targets[name]} && git add -A && git -c user.name=bench -c user.email=bench@localhost commit -q --allow-empty -m "
           "'bench: outputs of this machine'", path)
    runs = {"head": [], "ref": []}
    for r in range(rounds):
        for name in (("head", "ref") if r % 2 == 0 else ("ref", "head")):
            print(f"round {r + 1}/{rounds}: {name}", flush=True)
            runs[name].append(one_round(clones[name], tests, dag, targets[name]))
    shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    for key in ("cold_repro_s", "noop_repro_s", "tau_experiment_s", "test_s"):
        h, f = median_of(runs["head"], key), median_of(runs["ref"], key)
        if h is not None:
            summary[key] = {"head": h, "ref": f, "ratio": round(h / f, 3)}
    failed = {name: sum(r.get("test_failed", False) for r in rs) for name, rs in runs.items()}
    if any(failed.values()):  # the suites' runs that failed a test: timed all the same, and said so
        summary["test_s"]["failed_runs"] = failed
    return {"ref": ref, "rounds": rounds, "head_only": head_only, "head_targets": head_targets, "summary": summary,
            "runs": runs}


def _matmul_seconds(b, d, m, steps):
    """The five products of one SAE step, ``steps`` times: encode and decode forward; backward grad W_enc,
    grad f and grad W_dec (the input needs no gradient). Same shapes and memory layouts as the training step
    (W_enc column-major; its gradient formed as (g_pre^T x)^T, the faster of the two ways here)."""
    import torch

    xb, w_enc, w_dec = torch.randn(b, d), torch.randn(m, d).t(), torch.randn(m, d)
    f, g_out, g_pre = torch.randn(b, m), torch.randn(b, d), torch.randn(b, m)
    for _ in range(20):
        xb @ w_enc
    t0 = time.perf_counter()
    for _ in range(steps):
        xb @ w_enc, f @ w_dec, (g_pre.t() @ xb).t(), g_out @ w_dec.t(), f.t() @ g_out
    return time.perf_counter() - t0


def training_inputs(site: str = "mlp-hidden"):
    """The committed run's standardised train activations at ``site``, its KL splice, and its SAE params: what
    train_sae trains on."""
    sys.path.insert(0, str(ROOT / "bench"))
    import site_inputs
    from sae_pipeline.runtime import setup_torch
    from sae_pipeline.sae_train import splice_for

    setup_torch("cpu")
    inp = site_inputs.load(site)
    ctx = inp.site.collect(inp.x["train"])[1]
    return inp.acts.train, splice_for(inp.site, inp.acts.shift, inp.acts.scale, ctx), inp.sae_cfg


def throughput(steps=1200, rounds=6):
    """SAE training GFLOP/s vs torch.matmul at the same shapes, in the same process, on the committed run's
    activations and base model (default params). A step has five (B,d)x(d,m)-sized matmuls, 10·B·d·m FLOPs; the
    reference times exactly those five products; training and reference alternate in ``rounds`` short blocks
    and the ratio is the median over blocks."""
    x, readout, cfg = training_inputs()
    from sae_pipeline.runtime import generator
    from sae_pipeline.sae_train import Phase, final_phase, new_sae, run_phase

    b, d, m = cfg.batch_size, x.shape[1], cfg.latents
    flops = 10 * b * d * m
    per_round = steps // rounds
    sae = new_sae(cfg, x, 0)
    # warm-up, and realistic thresholds: the first 6 epochs of the default recipe's own schedule
    run_phase(sae, x, dataclasses.replace(final_phase(cfg, 0.2), epochs=6, horizon=cfg.epochs, kl_coef=0.0), cfg,
              generator(0, 9), readout=readout)
    out = {}
    for activation in ("jumprelu", "topk"):
        train_s, mm_s, ratios = 0.0, 0.0, []
        for r in range(rounds):
            t0 = time.perf_counter()
            epochs = per_round * b / len(x)
            if activation == "jumprelu":  # train_sae's phase in its KL window (KL term, pre-act loss, clipping)
                phase = dataclasses.replace(final_phase(cfg, 0.2), epochs=epochs, kl_epochs=epochs)
            else:  # the topk baseline's phase (AuxK, unit-norm decoder)
                phase = Phase("topk", epochs)
            run_phase(sae, x, phase, cfg, generator(0, 10 + r), readout=readout)
            t = time.perf_counter() - t0
            mm = _matmul_seconds(b, d, m, per_round)
            train_s, mm_s = train_s + t, mm_s + mm
            ratios.append(mm / t)
        out[activation] = {"steps": per_round * rounds, "steps_per_s": round(per_round * rounds / train_s, 1),
                           "train_gflops": round(flops * per_round * rounds / train_s / 1e9, 2),
                           "matmul_gflops": round(flops * per_round * rounds / mm_s / 1e9, 2),
                           "ratio": round(statistics.median(ratios), 3),
                           "ratio_per_round": [round(v, 3) for v in ratios]}
    return {**out["jumprelu"], "topk": out["topk"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default=REF, help=f"reference commit (default {REF}, the previous release)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tests", action="store_true", help="also time the test suite in both clones")
    ap.add_argument("--tests-only", action="store_true", help="time only the test suites (no DAG runs)")
    ap.add_argument("--throughput", action="store_true", help="only the SAE step (prints one JSON line)")
    ap.add_argument("--head-only", default="", metavar="MODEL", help="HEAD with only this model and its sites in "
                    "params.yaml (e.g. mlp: the zoo's MLP-only configuration against a single-model reference)")
    ap.add_argument("--head-targets", default="", metavar="STAGES", help="HEAD's commands on these stages and what "
                    "is upstream of them (e.g. analyze@mlp-hidden: what the README's MLP-only iteration, `make repro "
                    "ONLY='mlp-*'`, runs), against the reference's whole DAG")
    ap.add_argument("--out", default=None, help="results file: a bare name goes in bench/, a path is taken as "
                    "given (default bench/results.json, with --tests-only bench/results_tests.json)")
    args = ap.parse_args()
    out_path = Path(args.out or ("results_tests.json" if args.tests_only else "results.json"))
    out_path = ROOT / "bench" / out_path if len(out_path.parts) == 1 else out_path.resolve()
    if not out_path.parent.is_dir():  # before the hour of runs, not after
        ap.error(f"--out: no folder {out_path.parent}")
    if args.throughput:
        print(json.dumps(throughput()))
        return
    import torch  # only for its version, in the report

    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"{_cpu_model()}", "torch": torch.__version__,
               **side_by_side(args.ref, args.rounds, args.tests or args.tests_only, not args.tests_only,
                              args.head_only, args.head_targets)}
    # In a fresh process, as every stage runs (measured inside a long-lived process that had driven DVC, the
    # same step ran ~25% slower; not explained).
    if not args.tests_only:
        out = subprocess.run([sys.executable, __file__, "--throughput"], check=True, capture_output=True, text=True,
                             env=ENV).stdout
        results["throughput"] = json.loads(out.strip().splitlines()[-1])
    print(f"{'':22s} {'HEAD':>9s} {args.ref:>9s} {'ratio':>7s}   (medians of {args.rounds} alternating rounds)")
    for key, v in results["summary"].items():
        print(f"{key:22s} {v['head']:9.2f} {v['ref']:9.2f} {v['ratio']:7.3f}"
              + (f"   (runs that failed a test: {v['failed_runs']})" if "failed_runs" in v else ""))
    for name in ("head", "ref"):
        stages = {}
        for r in results["runs"][name]:
            for s, t in r.get("cold_stage_s", {}).items():
                stages.setdefault(s, []).append(t)
        if stages:
            print(f"cold stages, {name}: " + ", ".join(f"{s} {statistics.median(v):.1f}" for s, v in stages.items()))
    if "throughput" in results:
        tp = results["throughput"]
        print(f"SAE step: {tp['steps_per_s']} steps/s, ratio to the matmul reference {tp['ratio']:.3f} "
              f"(TopK {tp['topk']['ratio']:.3f})")
    with open(out_path, "w") as fh:
        json.dump(results, fh, indent=2)
        fh.write("\n")


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
