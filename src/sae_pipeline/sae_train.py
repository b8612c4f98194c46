"""Training, λ calibration and θ tuning of the SAE. All of it goes through ``SAE.encode``/``SAE.decode``."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .config import SAEConfig
from .metrics import fvu, l0
from .optim import Adam, cosine_lr
from .runtime import generator
from .sae import SAE, topk_relu

LOG_EVERY = 25  # steps between rows of the training-curve plot


@dataclass
class Phase:
    activation: str  # topk | jumprelu | relu
    epochs: float
    lam: float = 0.0  # sparsity penalty: λ·L0 for jumprelu, λ·L1 for relu, unused for topk
    name: str = ""
    lr: float | None = None  # None = sae.lr


def new_sae(cfg: SAEConfig, x: torch.Tensor, seed: int) -> SAE:
    activation = {"jumprelu": "jumprelu", "topk": "topk", "relu_l1": "relu"}[cfg.arch]
    return SAE(x.shape[1], cfg.latents, activation, k=cfg.target_actives, bandwidth=cfg.tau,
               theta_init=cfg.theta_init, generator=generator(seed, 2)).to(x.device)


def sparsity_loss(sae: SAE, pre: torch.Tensor, f: torch.Tensor, lam: float) -> torch.Tensor:
    """jumprelu: λ·Σ_i H(pre_i - θ_i) (paper eq. 9); relu: λ·Σ_i f_i·||W_dec,i|| (Bricken et al. 2023); topk: 0."""
    if sae.activation == "jumprelu":
        return lam * sae.l0_indicator(pre).sum(-1).mean()
    if sae.activation == "relu":
        return lam * (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
    return pre.new_zeros(())


def auxk_loss(sae: SAE, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """Dead latents learn to reconstruct the residual (Gao et al. 2024, sec. A.2 "AuxK"), k_aux = d_in/2."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    resid = (x - x_hat).detach()
    f_aux = topk_relu(pre.masked_fill(~dead, float("-inf")), min(n_dead, sae.d_in // 2))
    return (resid - f_aux @ sae.W_dec).pow(2).sum(-1).mean() / resid.pow(2).sum(-1).mean().clamp_min(1e-8)


def batches(n: int, batch_size: int, steps: int, gen: torch.Generator):
    """Index batches over fresh seeded permutations; fractional epochs end mid-permutation."""
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        yield perm[pos:pos + batch_size]
        pos += batch_size


def run_phase(sae: SAE, x: torch.Tensor, phase: Phase, cfg: SAEConfig, gen: torch.Generator,
              history: list[dict] | None = None, desc: str = "") -> None:
    """One optimisation phase: Adam, cosine schedule, unit-norm decoder rows, θ kept positive."""
    sae.activation = phase.activation
    steps = max(1, round(phase.epochs * len(x) / cfg.batch_size))
    opt, lr = Adam(sae.parameters()), phase.lr or cfg.lr
    since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=x.device)
    use_aux = phase.activation == "topk" and cfg.aux_k_coef > 0
    step0 = history[-1]["step"] if history else 0
    for s, idx in enumerate(tqdm(batches(len(x), cfg.batch_size, steps, gen), total=steps, desc=desc, leave=False)):
        xb = x[idx.to(x.device)]
        pre = sae.pre_acts(xb)
        f = sae.activate(pre)
        x_hat = sae.decode(f)
        mse = (xb - x_hat).pow(2).sum(-1).mean()
        fired = (f > 0).any(0)
        since_fired = torch.where(fired, 0, since_fired + 1)
        loss = mse + sparsity_loss(sae, pre, f, phase.lam)
        if use_aux:
            loss = loss + cfg.aux_k_coef * auxk_loss(sae, xb, x_hat, pre, since_fired > cfg.dead_steps)
        opt.zero_grad()
        loss.backward()
        opt.step(lr * cosine_lr(s, steps))
        sae.normalize_decoder()
        with torch.no_grad():
            sae.threshold.clamp_(min=1e-3)  # θ must stay positive for f = pre·H(pre-θ) to be a JumpReLU
        if history is not None and (s % LOG_EVERY == 0 or s == steps - 1):
            history.append({
                "step": step0 + s + 1, "phase": phase.name or phase.activation, "loss": round(loss.item(), 5),
                "mse": round(mse.item(), 5), "l0": round(l0(f.detach()), 3), "fvu": round(fvu(xb, x_hat.detach()), 5),
                "dead_frac": round((since_fired > cfg.dead_steps).float().mean().item(), 5),
            })


@torch.no_grad()
def init_threshold(sae: SAE, x: torch.Tensor, target: float) -> float:
    """One global θ so that the expected L0 on ``x`` equals ``target``: the (1 - target/d_sae) quantile of
    the pre-activations. Turns a TopK warm start into a JumpReLU with the same sparsity."""
    pre = sae.pre_acts(x).flatten()
    k = max(1, round(pre.numel() * (1 - target / sae.d_sae)))
    theta = max(pre.kthvalue(k).values.item(), 1e-3)
    sae.threshold.fill_(theta)
    return theta


@torch.no_grad()
def evaluate_split(sae: SAE, x: torch.Tensor) -> dict:
    f = sae.encode(x)
    return {"l0": l0(f), "fvu": fvu(x, sae.decode(f))}


def starting_point(cfg: SAEConfig, x: torch.Tensor, seed: int) -> SAE:
    """Where the final training starts; calibrate_lambda builds it and its λ probes start from it.

    jumprelu: ``sae.warmstart_epochs`` of TopK(k=target) training, then one global θ at the target L0 (a warm
    start, measured against ``sae.warmstart_epochs=0``, i.e. from scratch, in the README). topk and relu_l1: the
    seeded initialisation; train_sae trains them for warmstart_epochs + epochs_final, the same total.
    """
    sae = new_sae(cfg, x, seed)
    if cfg.arch == "jumprelu" and cfg.warmstart_epochs > 0:
        run_phase(sae, x, Phase("topk", cfg.warmstart_epochs, name="topk_warmstart"), cfg, generator(seed, 3),
                  desc="sae topk warm start")
        init_threshold(sae, x[:8192], cfg.target_actives)
        sae.activation = "jumprelu"
    return sae


def final_phase(cfg: SAEConfig, lam: float) -> Phase:
    if cfg.arch == "jumprelu":
        # after a warm start the STE phase fine-tunes at sae.ste_lr; from scratch it trains at sae.lr
        lr = cfg.ste_lr if cfg.warmstart_epochs > 0 else cfg.lr
        return Phase("jumprelu", cfg.epochs_final, lam, "jumprelu_ste", lr)
    activation = "topk" if cfg.arch == "topk" else "relu"
    return Phase(activation, cfg.warmstart_epochs + cfg.epochs_final, lam, cfg.arch)


def train(cfg: SAEConfig, start: SAE, x: torch.Tensor, lam: float, seed: int) -> tuple[SAE, list[dict]]:
    """The final SAE: the starting point trained with the calibrated λ. Returns it and its training curve."""
    sae, history = copy.deepcopy(start), []
    phase = final_phase(cfg, lam)
    if phase.epochs > 0:
        run_phase(sae, x, phase, cfg, generator(seed, 4), history, desc=f"sae {phase.name}")
    return sae.eval(), history


def calibrate(cfg: SAEConfig, start: SAE, x_train: torch.Tensor, x_val: torch.Tensor, seed: int) -> dict:
    """Log-uniform bisection of λ over [lambda_min, lambda_max] with short trainings from the final run's own
    starting point, until the val L0 is within ``calib_tolerance`` of the target. λ saturates at both ends
    (SAELens #719), hence the log scale."""
    if cfg.arch == "topk":
        return {"lambda": 0.0, "converged": True, "probes": [],
                "note": "topk has no sparsity penalty: k = sae.target_actives fixes L0"}
    phase = final_phase(cfg, 0.0)
    # From a warm start, L0 moves slowly and a short probe shows where λ pushes it. From scratch (relu_l1, or
    # jumprelu with warmstart_epochs=0) L0 is still falling after one epoch, and a short probe picks a λ that
    # collapses the full run (seen: λ 9.6, L0 1.6 before tuning, FVU 0.63), so there each probe is a full run.
    probe_epochs = cfg.calib_epochs if cfg.arch == "jumprelu" and cfg.warmstart_epochs > 0 else phase.epochs
    lo, hi = math.log(cfg.lambda_min), math.log(cfg.lambda_max)
    probes = []
    for i in range(cfg.calib_probes):
        lam = math.exp((lo + hi) / 2)
        sae = copy.deepcopy(start)
        probe = Phase(phase.activation, probe_epochs, lam, f"probe{i + 1}", phase.lr)
        run_phase(sae, x_train, probe, cfg, generator(seed, 5), desc=f"λ probe {i + 1}")
        ev = evaluate_split(sae.eval(), x_val)
        probes.append({"probe": i + 1, "lambda": lam, "l0": round(ev["l0"], 4), "fvu": round(ev["fvu"], 5)})
        if abs(ev["l0"] - cfg.target_actives) <= cfg.calib_tolerance * cfg.target_actives:
            break
        lo, hi = (math.log(lam), hi) if ev["l0"] > cfg.target_actives else (lo, math.log(lam))
    best = min(probes, key=lambda p: abs(p["l0"] - cfg.target_actives))
    converged = abs(best["l0"] - cfg.target_actives) <= cfg.calib_tolerance * cfg.target_actives
    return {"lambda": best["lambda"], "converged": converged, "probes": probes}


@torch.no_grad()
def tune_threshold(sae: SAE, x_val: torch.Tensor, target: float, iters: int = 40) -> dict:
    """Bisect one scalar on the validation split so that its L0 lands on ``target``.

    jumprelu: a global scale s of θ (θ -> s·θ keeps the per-latent ratios the STE learned); relu: a global shift
    of b_enc; topk: nothing to tune, k = target. The test split is never seen here.
    """
    before = evaluate_split(sae, x_val)["l0"]
    if sae.activation == "topk":
        return {"knob": "none", "value": 0.0, "l0_val_before": before, "l0_val_after": before}
    if sae.activation == "jumprelu":
        knob, base = "theta_scale", sae.threshold.clone()
        apply = lambda v: sae.threshold.copy_(base * v)  # noqa: E731
        lo, hi, increasing = 0.0, 1.0, False
        while hi < 1e6:
            apply(hi)
            if evaluate_split(sae, x_val)["l0"] <= target:
                break
            hi *= 2
    else:
        knob, base = "b_enc_shift", sae.b_enc.clone()
        apply = lambda v: sae.b_enc.copy_(base + v)  # noqa: E731
        lo, hi, increasing = -50.0, 50.0, True
    best = None
    for _ in range(iters):
        mid = (lo + hi) / 2
        apply(mid)
        got = evaluate_split(sae, x_val)["l0"]
        if best is None or abs(got - target) < abs(best[1] - target):
            best = (mid, got)
        if (got > target) == increasing:
            hi = mid
        else:
            lo = mid
    apply(best[0])
    return {"knob": knob, "value": best[0], "l0_val_before": before, "l0_val_after": best[1]}
