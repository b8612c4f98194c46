"""Sharing results between machines through a real DVC SSH remote (dvc-ssh against OpenSSH on localhost).

Each "machine" is a separate clone with its own DVC cache; the remote is a folder served by sshd.
"""
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # real DVC on the shared tiny project: `make test-fast` leaves these out

from conftest import ROOT, run, set_params, snapshot, with_remote

sys.path.insert(0, str(ROOT / "bench"))
import pareto  # noqa: E402  (its reader of `dvc exp show --json`)



REMOTE = [sys.executable, str(ROOT / "tools/remote.py")]
SITES = ["mlp-hidden", "vit-block1"]  # the tiny project's (conftest)


def clone(src, dest, env):
    run(["git", "clone", "-q", str(src), str(dest)], dest.parent, env)
    return dest


def ran(proc) -> list[str]:
    return re.findall(r"Running stage '([a-z_]+(?:@[a-z0-9_-]+)?)'", proc.stdout)


def cache_files(root: Path) -> set[str]:
    """The objects and run-cache entries under a DVC cache or remote folder (the two are laid out alike)."""
    return {str(p.relative_to(root)) for d in ("files", "runs") for p in (root / d).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def remote(tiny_project, tmp_path_factory) -> Path:
    """A remote folder that holds the shared project's outputs and run-cache, for the tests that start from them.
    A remote is laid out as the cache is (``files/md5/..``, ``runs/..``), so it is filled by copying the project's
    cache: what `dvc push --run-cache` would send, and a few objects more, without ~3.5 s of SSH per worker
    (test_push_and_pull_give_a_second_clone_identical_artifacts pushes for real and checks that the push sends
    nothing the copy lacks). Tests may add to it (objects are content-addressed) but leave what is there intact."""
    a, _env = tiny_project
    path = tmp_path_factory.mktemp("remote") / "store"
    for d in ("files", "runs"):  # copyfile: writable copies, as a push writes them (the cache's are read-only)
        shutil.copytree(a / ".dvc/cache" / d, path / d, copy_function=shutil.copyfile)
    return path


def test_push_and_pull_give_a_second_clone_identical_artifacts(tiny, sshd, tmp_path):
    a, env = tiny
    env_a = with_remote(a, env, sshd, tmp_path / "remote", cli=True)  # the README's commands
    by_cli = (a / ".dvc/config.local").read_text()
    (a / ".dvc/config.local").unlink()
    with_remote(a, env, sshd, tmp_path / "remote")  # the other tests' shortcut writes the same file
    assert (a / ".dvc/config.local").read_text() == by_cli
    t0 = time.time()
    run(REMOTE + ["push", "--run-cache"], a, env_a)
    push_s = time.time() - t0
    size = sum(p.stat().st_size for p in (tmp_path / "remote").rglob("*") if p.is_file())
    assert cache_files(tmp_path / "remote") <= cache_files(a / ".dvc/cache")  # (the `remote` fixture's copy)
    b = clone(a, tmp_path / "b", env_a)
    env_b = with_remote(b, env, sshd, tmp_path / "remote")
    assert not (b / "data/models/mlp/base.pt").exists()
    t0 = time.time()
    run(REMOTE + ["pull", "--run-cache"], b, env_b)
    print(f"tiny project: pushed {size / 1e6:.1f} MB in {push_s:.1f} s, pulled in {time.time() - t0:.1f} s")
    assert snapshot(b) == snapshot(a)  # byte-identical: every file of data/, metrics/, plots/ and dvc.lock
    assert json.loads(run(["dvc", "status", "--json"], b, env_b).stdout) == {}
    assert ran(run(["dvc", "repro"], b, env_b)) == []


def test_models_split_across_two_machines_and_joined_on_a_third(tiny, sshd, remote, tmp_path):
    """An experiment (sae.tau=0.07) split by model: machine A runs the MLP's sites, machine B the ViT's, each
    `make push`es (outputs and run-cache); machine C pulls and its `dvc repro` computes only what needs
    both (the index page, the universality stage): every SAE stage comes from the run-cache ("is cached -
    skipping run")."""
    a, env = tiny
    env_a = with_remote(a, env, sshd, remote)  # it has the commit's own outputs, which the machines pull first
    parts = {"A": ["analyze@mlp-*", "control_sae@mlp-*"], "B": ["analyze@vit-*", "control_sae@vit-*"]}
    for name, globs in parts.items():
        m = clone(a, tmp_path / name, env_a)
        env_m = with_remote(m, env, sshd, remote)
        run(REMOTE + ["pull"], m, env_m)
        set_params(m / "params.yaml", {"sae": {"tau": 0.07}})  # a value no other test runs (no run-cache yet)
        got = ran(run(["dvc", "repro", "--glob", *globs], m, env_m))
        mine = [f"{st}@{s}" for st in ("train_sae", "analyze", "control_sae") for s in SITES if any(
            s.startswith(g.split("@")[1][:-1]) for g in globs)]
        assert sorted(got) == sorted(["check_params", *mine]), got  # its own sites' SAE side, nothing else
        run(REMOTE + ["push", "--run-cache"], m, env_m)
    c = clone(a, tmp_path / "C", env_a)
    env_c = with_remote(c, env, sshd, remote)
    run(REMOTE + ["pull", "--run-cache"], c, env_c)
    set_params(c / "params.yaml", {"sae": {"tau": 0.07}})
    proc = run(["dvc", "repro"], c, env_c)
    # check_params always runs (0.2 s; its marker is persist, so not run-cached); index and universality are
    # what needs both
    assert sorted(ran(proc)) == ["check_params", "index", "universality"], proc.stdout
    for stage in ("train_sae", "analyze", "control_sae"):
        for site in SITES:
            assert f"Stage '{stage}@{site}' is cached - skipping run" in proc.stdout, (stage, site)
    page = (c / "plots/index.html").read_text()
    assert all(f"dashboard/{site}/index.html" in page for site in SITES)
    assert json.loads(run(["dvc", "status", "--json"], c, env_c).stdout) == {}


def test_remote_failures_are_one_line_and_a_retry_completes(tiny, sshd, remote, tmp_path):
    a, env = tiny
    env_a = with_remote(a, env, sshd, remote)
    b = clone(a, tmp_path / "b", env_a)
    env_b = with_remote(b, env, sshd, remote)

    def fails(args, cwd, env_, expect):
        proc = run(REMOTE + args, cwd, env_, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and expect in lines[0], proc.stderr + proc.stdout
        return lines[0]

    # a short object that a failed pull filed in the cache without checking it out (CI once saw the retry of the
    # interrupted pull below trust one), read-only as DVC leaves what it fetched, which DVC then checks out
    # without hashing: the failed pull hashes the objects of the files the workspace lacks and drops it
    def cached(rel):  # the object of a file in b's cache and in the remote
        md5 = __import__("hashlib").md5((a / rel).read_bytes()).hexdigest()
        return (root / "files/md5" / md5[:2] / md5[2:] for root in (b / ".dvc/cache", remote))

    # CI's case: the file in a folder output (data/shared/model), whose listing (the .dir object) came down whole
    lock = __import__("yaml").safe_load((a / "dvc.lock").read_text())
    listing = next(o["md5"] for o in lock["stages"]["shared_dictionary"]["outs"] if o["path"] == "data/shared/model")
    planted, _ = cached("data/shared/model/shared.pt")
    for obj, data in ((b / ".dvc/cache/files/md5" / listing[:2] / listing[2:],
                       (a / ".dvc/cache/files/md5" / listing[:2] / listing[2:]).read_bytes()), (planted, b"short")):
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(data)
        obj.chmod(0o444)

    # the server is down: pull fails, says so, and the workspace is reported incomplete (nothing half-pulled)
    sshd.stop()
    try:
        line = fails(["pull"], b, env_b, "the remote's server cannot be reached")
        assert "the workspace is incomplete" in line and not planted.exists(), line
        fails(["push"], a, env_a, "the remote's server cannot be reached")
    finally:
        sshd.start()
    assert json.loads(run(["dvc", "status", "--json"], b, env_b).stdout) != {}
    shutil.rmtree(b / ".dvc/cache")  # (what was planted above: the next pull's first object signals it started)

    # the server goes away in the middle of a pull: whatever is in the workspace is complete, the rest is
    # missing and `dvc status` says so; the retry fetches the rest
    proc = subprocess.Popen(REMOTE + ["pull"], cwd=b, env=env_b, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not (b / ".dvc/cache").exists():
            time.sleep(0.02)
        sshd.stop()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # a hung client: stop it (it is this test's own process)
            proc.kill()
            proc.wait()
        if sshd.proc is None:
            sshd.start()
    if proc.returncode != 0:  # (a very fast machine may finish first: then there is nothing to check here)
        assert len(err.strip().splitlines()) == 1, err
        lock = json.loads(json.dumps(__import__("yaml").safe_load((b / "dvc.lock").read_text())))
        for stage in lock["stages"].values():
            for o in stage.get("outs", []):
                p = b / o["path"]
                if p.is_file() and "md5" in o:  # present means complete: its bytes hash to the locked md5
                    assert __import__("hashlib").md5(p.read_bytes()).hexdigest() == o["md5"], o["path"]
    run(REMOTE + ["pull"], b, env_b)
    assert snapshot(b) == snapshot(a)

    # a file that came down cut short and was filed in the cache under the whole file's hash (seen once here
    # after the interrupted pull above: an empty saelens/cfg.json that the rerun trusted): the pull hashes what it
    # checked out, removes the file and its cache object and says to rerun; the rerun fetches it whole
    # (the remote's copy is truncated for one transfer: what arrives is what a cut-off read leaves)
    rel = "data/sae/mlp-hidden/saelens/cfg.json"
    obj, remote_obj = cached(rel)
    obj.unlink()
    (b / rel).unlink()
    whole = remote_obj.read_bytes()
    remote_obj.write_bytes(whole[: len(whole) // 2])
    try:
        line = fails(["pull"], b, env_b, "came down cut short")
        assert rel in line and not (b / rel).exists() and not obj.exists(), line
    finally:
        remote_obj.write_bytes(whole)  # the module's remote, whole again for the tests after this one
    run(REMOTE + ["pull"], b, env_b)
    assert snapshot(b) == snapshot(a)

    # a wrong key
    run(["dvc", "remote", "modify", "--local", "storage", "keyfile", str(sshd.wrong_keyfile)], b, env_b)
    fails(["pull"], b, env_b, "the server refused the login")
    run(["dvc", "remote", "modify", "--local", "storage", "keyfile", str(sshd.keyfile)], b, env_b)


@pytest.mark.parametrize("mode", ["full", "read-only"])
def test_full_or_read_only_remote_is_one_line(tiny, sshd, tmp_path, mode):
    a, env = tiny
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    opts = "size=512k" if mode == "full" else "size=8m"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs CAP_SYS_ADMIN, which this machine does not give the tests")
    try:
        (mnt / "remote").mkdir()  # the remote folder exists; then the disk is made read-only
        if mode == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        env_a = with_remote(a, env, sshd, mnt / "remote", name="small")
        proc = run(REMOTE + ["push", "-r", "small"], a, env_a, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert "read-only" in lines[0] and "rerun" in lines[0], lines[0]  # the cause, and what to do
    finally:
        subprocess.run(["umount", str(mnt)], check=False)  # (the `tiny` fixture drops the remote afterwards)


def test_sweep_split_across_two_machines_and_collected_on_a_third(tiny, sshd, remote, tmp_path):
    """From one commit, two clones run different parts of the sweep and `dvc exp push` them to a shared bare git
    remote and the DVC remote; a third clone pulls every experiment and builds the Pareto table from
    `dvc exp show --json` without running a stage. The commit is the shared tiny project's (pushed to a bare
    origin), so nothing upstream of the SAE is recomputed here."""
    a, env = tiny
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", "--initial-branch=main", str(origin)], tmp_path, env)
    env = with_remote(a, env, sshd, remote)  # with the commit's outputs and run-cache
    run(["git", "push", "-q", str(origin), "HEAD:refs/heads/main"], a, env)
    # one experiment a machine: what is tested is the split, the push and the collection, not the grid's size
    sweep = [sys.executable, str(ROOT / "bench/sweep.py"), "--site", "vit-block1", "--archs", "jumprelu", "topk",
             "--targets", "4"]
    names = set()
    # machine 1 runs its experiment through DVC's queue (a Celery worker, as `make sweep` does by default), machine
    # 2 with --jobs 1, which runs it in a temp copy in the foreground (`dvc exp run --temp`): both paths tested
    for part, jobs in (("1/2", "2"), ("2/2", "1")):
        m = clone(origin, tmp_path / f"machine{part[0]}", env)
        env_m = with_remote(m, env, sshd, remote)
        run(REMOTE + ["pull"], m, env_m)
        out = run(sweep + ["--part", part, "--jobs", jobs, "--push", "origin"], m, env_m, timeout=900).stdout
        assert ("dvc queue start" in out) is (jobs == "2") and ("--temp" in out) is (jobs == "1"), out
        names |= set(re.search(r"pushed 1 experiments to origin: (.+)", out).group(1).split())
    assert names == {"sweep-vit-block1-jumprelu-4", "sweep-vit-block1-topk-4"}
    c = clone(origin, tmp_path / "collector", env)
    env_c = with_remote(c, env, sshd, remote)
    out = run(sweep + ["--collect", "origin", "--out-csv", "docs/pareto.csv", "--out-png", "docs/pareto.png"], c,
              env_c).stdout
    assert "Running stage" not in out
    rows = (c / "docs/pareto.csv").read_text().splitlines()
    assert len(rows) == 3 and {r.split(",")[0] for r in rows[1:]} == names
    assert (c / "docs/pareto.png").stat().st_size > 10_000
    assert not (c / "data/models/vit/base.pt").exists()  # nothing was computed (or even checked out) here
    # each experiment reran the site's SAE and analysis, and left the stages that read every site as they were
    metrics = {name: {k: v.get("data") for k, v in data["metrics"].items()}
               for name, _rev, data in pareto.runs(json.loads(run(["dvc", "exp", "show", "--json"], c, env_c).stdout))}
    for name in names:
        for key, changed in (("sites/vit-block1/summary", True), ("sites/vit-block1/analysis", True),
                             ("universality", False), ("controls/sites/vit-block1", False)):
            got, base = metrics[name][f"metrics/{key}.json"], metrics["workspace"][f"metrics/{key}.json"]
            assert got and base and (got != base) is changed, (name, key)
