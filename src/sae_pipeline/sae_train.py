"""Training, λ calibration and θ tuning of the SAE. All of it goes through ``SAE.encode``/``SAE.decode``."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .config import SAEConfig
from .metrics import fvu, kl_div_logits, l0
from .optim import Adam, cosine_lr
from .runtime import generator
from .sae import SAE, jumprelu_backward, jumprelu_forward, topk_relu

LOG_EVERY = 25  # steps between rows of the training-curve plot


@dataclass
class Phase:
    activation: str  # topk | jumprelu | relu
    epochs: float
    lam: float = 0.0  # sparsity penalty: λ·L0 for jumprelu, λ·L1 for relu, unused for topk
    name: str = ""
    lr: float | None = None  # None = sae.lr
    kl_coef: float = 0.0  # weight of KL(base || spliced logits), needs a Readout
    kl_epochs: float | None = None  # the KL term acts in this many final epochs of the phase; None = all of it


@dataclass
class Readout:
    """The base model's logits as an affine map of the SAE's (normalised) input: ``logits = x @ weight.T + bias``,
    i.e. fc2 applied to ``x * scale + shift``. Lets a phase add KL(base || spliced) to its loss.

    Why: an MSE-trained SAE spends its error budget evenly over directions the classifier ignores and directions
    it reads. A short KL+MSE fine-tune at the end of training (Karvonen 2025, arXiv 2503.17272; the end-to-end SAEs
    of Braun et al. 2024 train on KL throughout) moves the error out of the read-out directions. Here fc2 is
    128 -> 10, so the extra cost is three tiny matmuls a step. The targets are the base model's own logits on the
    training split: no labels are used, so the term asks for faithfulness, not for accuracy.
    """

    weight: torch.Tensor  # [n_classes, d_in]
    bias: torch.Tensor  # [n_classes]

    @classmethod
    def from_model(cls, fc2: torch.nn.Linear, shift: torch.Tensor, scale: torch.Tensor) -> "Readout":
        w, b = fc2.weight.detach(), fc2.bias.detach()
        return cls((w * scale).contiguous(), b + w @ shift)

    def to(self, device: torch.device) -> "Readout":
        return Readout(self.weight.to(device), self.bias.to(device))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight.t())

    def kl_grad(self, x: torch.Tensor, x_hat: torch.Tensor, coef: float) -> torch.Tensor:
        """d/dx_hat of coef · mean_rows KL(softmax(logits(x)) || softmax(logits(x_hat))): (q - p)·W / B."""
        p, q = self.logits(x).softmax(-1), self.logits(x_hat).softmax(-1)
        return (q - p) @ self.weight * (coef / len(x))

    def kl(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """Mean KL(base || spliced) over the rows, the same measure the reports use (``metrics.kl_logits``)."""
        return kl_div_logits(self.logits(x), self.logits(x_hat))


def new_sae(cfg: SAEConfig, x: torch.Tensor, seed: int) -> SAE:
    activation = {"jumprelu": "jumprelu", "topk": "topk", "relu_l1": "relu"}[cfg.arch]
    # the bandwidth (sae.tau) is set by the STE phase itself (run_phase), so a starting point does not depend on it
    return SAE(x.shape[1], cfg.latents, activation, k=cfg.target_actives,
               theta_init=cfg.theta_init, generator=generator(seed, 2)).to(x.device)


def sparsity_loss(sae: SAE, f: torch.Tensor, h: torch.Tensor | None, lam: float) -> torch.Tensor | float:
    """jumprelu: λ·Σ_i H(pre_i - θ_i) (paper eq. 9); relu: λ·Σ_i f_i·||W_dec,i|| (Bricken et al. 2023); topk:
    0. Batch means, written as sum/B (one reduction instead of two)."""
    if sae.activation == "jumprelu":
        return h.sum() * (lam / len(f))
    if sae.activation == "relu":
        return (f * sae.W_dec.norm(dim=1)).sum() * (lam / len(f))
    return 0.0


def auxk_loss(sae: SAE, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """Dead latents learn to reconstruct the residual (Gao et al. 2024, sec. A.2 "AuxK"), k_aux = d_in/2."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    resid = (x - x_hat).detach()
    f_aux = topk_relu(pre.masked_fill(~dead, float("-inf")), min(n_dead, sae.d_in // 2))
    return (resid - f_aux @ sae.W_dec).pow(2).sum(-1).mean() / resid.pow(2).sum(-1).mean().clamp_min(1e-8)


def batches(x: torch.Tensor, batch_size: int, steps: int, gen: torch.Generator):
    """Batches from fresh seeded permutations; fractional epochs end mid-permutation. Each epoch gathers the
    permuted rows once and yields contiguous views of them, not a gather per step."""
    n, pos = len(x), len(x)
    for _ in range(steps):
        if pos + batch_size > n:
            xp, pos = x.index_select(0, torch.randperm(n, generator=gen).to(x.device)), 0
        yield xp[pos:pos + batch_size]
        pos += batch_size


def run_phase(sae: SAE, x: torch.Tensor, phase: Phase, cfg: SAEConfig, gen: torch.Generator,
              history: list[dict] | None = None, desc: str = "", readout: Readout | None = None) -> None:
    """One optimisation phase: Adam, cosine schedule, unit-norm decoder rows, θ kept positive."""
    sae.activation = phase.activation
    if phase.activation == "jumprelu":
        sae.bandwidth = cfg.tau  # ε of the STE; only the JumpReLU's backward reads it
    steps = max(1, round(phase.epochs * len(x) / cfg.batch_size))
    opt, lr = Adam(sae.parameters()), phase.lr or cfg.lr
    since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=x.device)
    use_aux = phase.activation == "topk" and cfg.aux_k_coef > 0
    step0 = history[-1]["step"] if history else 0
    if phase.kl_coef > 0 and readout is None:
        raise ValueError(f"phase {phase.name} has kl_coef {phase.kl_coef} but no readout")
    kl_start = steps - round(phase.kl_epochs * len(x) / cfg.batch_size) if phase.kl_epochs is not None else 0
    for s, xb in enumerate(tqdm(batches(x, cfg.batch_size, steps, gen), total=steps, desc=desc, leave=False)):
        opt.zero_grad()
        kl = (readout, phase.kl_coef) if phase.kl_coef > 0 and s >= kl_start else None
        if phase.activation == "jumprelu":
            f, x_hat = jumprelu_grads(sae, xb, phase.lam, kl)
        else:
            f, x_hat = autograd_grads(sae, xb, phase.lam, cfg.aux_k_coef if use_aux else 0.0,
                                      since_fired > cfg.dead_steps, kl)
        opt.step(lr * cosine_lr(s, steps))
        sae.normalize_decoder()
        with torch.no_grad():
            sae.threshold.clamp_(min=1e-3)  # θ must stay positive for f = pre·H(pre-θ) to be a JumpReLU
            # f >= 0 for all three activations, so a positive column sum means the latent fired in this batch
            since_fired.add_(1).masked_fill_(f.sum(0) > 0, 0)
        if history is not None and (s % LOG_EVERY == 0 or s == steps - 1):
            mse = (xb - x_hat).pow(2).sum(-1).mean()  # the batch's, before this step's update
            loss = mse + sparsity_loss(sae, f, f > 0, phase.lam)
            kl_batch = readout.kl(xb, x_hat).item() if readout is not None else float("nan")
            if kl:
                loss = loss + kl[1] * kl_batch
            history.append({
                "step": step0 + s + 1, "phase": phase.name or phase.activation, "loss": round(float(loss), 5),
                "mse": round(mse.item(), 5), "l0": round(l0(f), 3), "fvu": round(fvu(xb, x_hat), 5),
                "kl": round(kl_batch, 6), "dead_frac": round((since_fired > cfg.dead_steps).float().mean().item(), 5),
            })


def autograd_grads(sae: SAE, xb: torch.Tensor, lam: float, aux_coef: float, dead: torch.Tensor,
                   kl: tuple[Readout, float] | None = None):
    """Gradients (into ``.grad``) of reconstruction + sparsity penalty (+ AuxK) through autograd: the TopK and
    ReLU/L1 phases. Returns detached ``(f, x_hat)``."""
    pre = sae.pre_acts(xb)
    f, h = sae.activate_l0(pre)
    x_hat = sae.decode(f)
    mse = F.mse_loss(x_hat, xb, reduction="sum") / len(xb)  # = mean over rows of ||x - x_hat||^2
    loss = mse + sparsity_loss(sae, f, h, lam)
    if aux_coef:
        loss = loss + aux_coef * auxk_loss(sae, xb, x_hat, pre, dead)
    if kl:
        loss = loss + kl[1] * kl[0].kl(xb, x_hat)
    loss.backward()
    return f.detach(), x_hat.detach()


@torch.no_grad()
def jumprelu_grads(sae: SAE, xb: torch.Tensor, lam: float, kl: tuple[Readout, float] | None = None):
    """Gradients (into ``.grad``) of the JumpReLU loss ||x - x_hat||^2 + λ·Σ_i H(pre_i - θ_i) (batch means;
    paper eq. 9), plus ``coef·KL(base || spliced)`` when ``kl = (readout, coef)``, in one pass without an
    autograd graph.

    Around the JumpReLU this is only the chain rule through the two affine maps; the STE pseudo-derivatives come
    from ``jumprelu_backward``, the same function autograd calls. At these sizes (a step is ~2 ms, five matmuls
    take 1 ms) autograd's graph bookkeeping is a fifth of a step; tests/test_sae.py checks these gradients
    against autograd through ``jumprelu`` and ``step``. Returns ``(f, x_hat)``.
    """
    b = len(xb)
    pre = sae.pre_acts(xb)
    f, h = jumprelu_forward(pre, sae.threshold)
    x_hat = sae.decode(f)
    grad_x_hat = (x_hat - xb).mul_(2.0 / b)
    if kl:
        grad_x_hat += kl[0].kl_grad(xb, x_hat, kl[1])
    sae.W_dec.grad = f.t() @ grad_x_hat
    sae.b_dec.grad = grad_x_hat.sum(0)
    grad_pre, sae.threshold.grad = jumprelu_backward(pre, sae.threshold, h, sae.bandwidth,
                                                     grad_x_hat @ sae.W_dec.t(), lam / b)
    # W_enc is stored column-major (a transposed copy of the decoder at init): compute its gradient in that same
    # layout, which the fused Adam kernel needs (it walks param and grad as flat memory) and which is also the
    # faster product here (213 vs 293 us).
    sae.W_enc.grad = (grad_pre.t() @ xb).t()
    sae.b_enc.grad = grad_pre.sum(0)
    return f, x_hat


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
    """Where the final training starts (the warm_start stage); calibrate_lambda's λ probes start from it too.

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
    """The phase train_sae runs. The KL term (``sae.kl_coef``) acts in its last ``sae.epochs_final`` epochs
    for every arch, so the baselines get the same fine-tune: for jumprelu that is the whole STE phase, for topk
    and relu_l1 the tail of their single cosine schedule."""
    if cfg.arch == "jumprelu":
        # after a warm start the STE phase fine-tunes at sae.ste_lr; from scratch it trains at sae.lr
        lr = cfg.ste_lr if cfg.warmstart_epochs > 0 else cfg.lr
        return Phase("jumprelu", cfg.epochs_final, lam, "jumprelu_ste", lr, cfg.kl_coef)
    activation = "topk" if cfg.arch == "topk" else "relu"
    return Phase(activation, cfg.warmstart_epochs + cfg.epochs_final, lam, cfg.arch, kl_coef=cfg.kl_coef,
                 kl_epochs=cfg.epochs_final)


def train(cfg: SAEConfig, start: SAE, x: torch.Tensor, lam: float, seed: int,
          readout: Readout | None = None) -> tuple[SAE, list[dict]]:
    """The final SAE: the starting point trained with the calibrated λ. Returns it and its training curve."""
    sae, history = copy.deepcopy(start), []
    phase = final_phase(cfg, lam)
    if phase.epochs > 0:
        run_phase(sae, x, phase, cfg, generator(seed, 4), history, desc=f"sae {phase.name}", readout=readout)
    return sae.eval(), history


def calibrate(cfg: SAEConfig, start: SAE, x_train: torch.Tensor, x_val: torch.Tensor, seed: int,
              readout: Readout | None = None) -> dict:
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
        probe = Phase(phase.activation, probe_epochs, lam, f"probe{i + 1}", phase.lr, phase.kl_coef,
                      None if phase.kl_epochs is None else min(phase.kl_epochs, probe_epochs))
        run_phase(sae, x_train, probe, cfg, generator(seed, 5), desc=f"λ probe {i + 1}", readout=readout)
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
