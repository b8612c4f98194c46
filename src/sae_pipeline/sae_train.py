"""Training, λ calibration and θ tuning of the SAE. All of it goes through ``SAE.encode``/``SAE.decode``."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .config import SAEConfig
from .metrics import fvu, kl_div_logits, l0
from .optim import Adam, cosine_lr, linear_tail_lr
from .runtime import generator
from .sae import SAE, jumprelu_backward, jumprelu_forward, topk_relu
from .zoo import Site

LOG_EVERY = 25  # steps between rows of the training-curve plot


# The from-scratch JumpReLU recipe (sae.recipe=scratch) follows SAELens's JumpReLU training (its "step" sparsity
# mode, after Rajamanoharan et al. 2024), with what measurably helped here (docs/recipes.md): λ ramps up linearly
# over the first 10% of steps (SAELens l0_warm_up_steps), the lr decays linearly to 0 over the last 20% (SAELens
# lr_decay_steps), gradients are clipped to norm 1 (SAELens), Adam works on log θ (SAELens's log_threshold), and
# decoder rows are free, starting at unit norm. Constants here were not worth a param (all measured in the notes).
LAMBDA_WARMUP = 0.1  # fraction of the steps over which λ ramps up from 0
LR_DECAY_TAIL = 0.2  # fraction of the steps over which the lr decays linearly to 0
GRAD_CLIP = 1.0  # clip the global gradient norm to this
# L0 after training falls with λ as L0 ∝ λ^-0.63 (measured: λ 0.2 -> 21.0, λ 1.0 -> 7.6, 18 epochs, L0 20 SAE);
# calibrate_and_train starts from this law and corrects along it.
L0_EXPONENT = 0.63


@dataclass
class Phase:
    activation: str  # topk | jumprelu | relu
    epochs: float  # epochs this phase runs
    lam: float = 0.0  # sparsity penalty: λ·L0 for jumprelu, λ·L1 for relu, unused for topk
    name: str = ""
    lr: float | None = None  # None = sae.lr
    kl_coef: float = 0.0  # weight of KL(base || spliced logits), needs a Readout
    kl_epochs: float | None = None  # the KL term acts in this many final epochs of the phase; None = all of it
    horizon: float | None = None  # schedules (lr, λ warm-up) are laid over this many epochs; None = epochs.
    #                               A λ probe runs the first epochs of the final phase's schedule this way.
    schedule: str = "cosine"  # cosine (warm-up, cosine decay) | linear_tail (constant, linear decay at the end)
    lam_warmup: float = 0.0  # fraction of the horizon over which λ ramps up from 0
    preact_coef: float = 0.0  # pre-activation loss on latents silent for sae.revive_after steps (jumprelu)
    grad_clip: float = 0.0  # 0 = no clipping
    unit_decoder: bool = True  # renormalise decoder rows to unit norm after every step
    log_theta: bool = False  # Adam on log θ instead of θ (jumprelu)


@dataclass
class Splice:
    """KL(base || spliced logits) for training, on the SAE's normalised inputs ``z``: the base model's logits with
    its site activations ``h = z * scale + shift`` replaced by the SAE's reconstruction, through the rest of the
    model (``Site.rest``). ``rows`` are the batch's row indices in the training split (for the site's context,
    e.g. the ViT's patch tokens).

    Why: an MSE-trained SAE spends its error budget evenly over directions the classifier ignores and directions
    it reads. A short KL+MSE fine-tune at the end of training (Karvonen 2025, arXiv 2503.17272; the end-to-end SAEs
    of Braun et al. 2024 train on KL throughout) moves the error out of the read-out directions. The targets are
    the base model's own logits on the training split: no labels are used, so the term asks for faithfulness, not
    for accuracy. The gradient comes from autograd through the frozen rest of the model; ``Readout`` is the same
    for a site whose rest is one linear layer, in closed form (tests/test_sae.py checks the two agree).
    """

    site: Site
    shift: torch.Tensor
    scale: torch.Tensor
    ctx: torch.Tensor | None  # [N_train, ...] the site's context of every training row, or None
    base: torch.Tensor | None = None  # [N_train, C] the base model's logits on every training row, or None

    def to(self, device: torch.device) -> "Splice":
        self.site.model.to(device)
        return Splice(self.site, self.shift.to(device), self.scale.to(device),
                      *(None if t is None else t.to(device) for t in (self.ctx, self.base)))

    def with_base(self, z_train: torch.Tensor) -> "Splice":
        """The same splice with the base logits of every training row computed once, here: they never change, and
        recomputing them every step was a third of the KL term's cost where the rest of the model is deep."""
        base = self.site.logits(z_train * self.scale + self.shift, self.ctx)
        return Splice(self.site, self.shift, self.scale, self.ctx, base)

    def logits(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx = None if self.ctx is None else self.ctx[rows]
        return self.site.rest(z * self.scale + self.shift, ctx)

    def kl(self, z: torch.Tensor, z_hat: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Mean KL(base || spliced) over the rows, the same measure the reports use (``metrics.kl_logits``);
        differentiable in ``z_hat``. ``z`` are the rows' own activations, read only without ``base``."""
        if self.base is not None:
            base = self.base[rows]
        else:
            with torch.no_grad():
                base = self.logits(z, rows)
        return kl_div_logits(base, self.logits(z_hat, rows))

    def kl_grad(self, z: torch.Tensor, z_hat: torch.Tensor, coef: float, rows: torch.Tensor) -> torch.Tensor:
        """d/dz_hat of coef · kl."""
        with torch.enable_grad():
            leaf = z_hat.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.kl(z, leaf, rows) * coef, leaf)
        return grad


@dataclass
class Readout:
    """``Splice`` for a site whose rest of the model is one linear layer (the MLP's ``hidden``, the CNN's ``fc``):
    ``logits = z @ weight.T + bias`` with the normaliser folded in, and the KL gradient in closed form,
    ``(q - p)·W / B`` (three small matmuls a step, no autograd graph)."""

    weight: torch.Tensor  # [n_classes, d_in]
    bias: torch.Tensor  # [n_classes]

    @classmethod
    def from_linear(cls, layer: torch.nn.Linear, shift: torch.Tensor, scale: torch.Tensor) -> "Readout":
        w, b = layer.weight.detach(), layer.bias.detach()
        return cls((w * scale).contiguous(), b + w @ shift)

    def to(self, device: torch.device) -> "Readout":
        return Readout(self.weight.to(device), self.bias.to(device))

    def logits(self, z: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        return torch.addmm(self.bias, z, self.weight.t())

    def kl_grad(self, z: torch.Tensor, z_hat: torch.Tensor, coef: float, rows: torch.Tensor | None = None
                ) -> torch.Tensor:
        p, q = self.logits(z).softmax(-1), self.logits(z_hat).softmax(-1)
        return (q - p) @ self.weight * (coef / len(z))

    def kl(self, z: torch.Tensor, z_hat: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        return kl_div_logits(self.logits(z), self.logits(z_hat))


def splice_for(site: Site, shift: torch.Tensor, scale: torch.Tensor, ctx: torch.Tensor | None,
               general: bool = False, z_train: torch.Tensor | None = None) -> Splice | Readout:
    """The KL splice of a site: the closed-form ``Readout`` where the rest of the model is linear (unless
    ``general``), else autograd through ``Site.rest`` (with the base logits of ``z_train``, the training rows,
    computed once when given)."""
    layer = site.readout()
    if layer is not None and not general:
        return Readout.from_linear(layer, shift, scale)
    splice = Splice(site, shift, scale, ctx)
    return splice if z_train is None else splice.with_base(z_train)


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
    """``(batch, its row indices)`` from fresh seeded permutations; fractional epochs end mid-permutation. Each
    epoch gathers the permuted rows once and yields contiguous views of them, not a gather per step."""
    n, pos = len(x), len(x)
    for _ in range(steps):
        if pos + batch_size > n:
            perm = torch.randperm(n, generator=gen).to(x.device)
            xp, pos = x.index_select(0, perm), 0
        yield xp[pos:pos + batch_size], perm[pos:pos + batch_size]
        pos += batch_size


def run_phase(sae: SAE, x: torch.Tensor, phase: Phase, cfg: SAEConfig, gen: torch.Generator,
              history: list[dict] | None = None, desc: str = "", readout: Splice | Readout | None = None,
              gate: tuple[int, Callable[[], bool]] | None = None) -> bool:
    """One optimisation phase: Adam, the phase's lr schedule and λ warm-up, θ kept positive.

    ``gate = (n, check)``: after ``n`` steps, ``check(sae)`` decides whether the phase goes on (True) or stops there
    (False: returns False, the SAE left as it is after n steps). It only reads the SAE, so a phase that passes its
    gate ends bit for bit as one without a gate. Returns True when the phase ran to its end."""
    sae.activation = phase.activation
    if phase.activation == "jumprelu":
        sae.bandwidth = cfg.tau  # ε of the STE; only the JumpReLU's backward reads it
    per_epoch = len(x) / cfg.batch_size
    steps = max(1, round(phase.epochs * per_epoch))
    horizon = max(steps, round((phase.horizon or phase.epochs) * per_epoch))
    warm_steps = max(1, round(phase.lam_warmup * horizon))
    log_t = sae.threshold.detach().clamp_min(1e-6).log().requires_grad_(True) if phase.log_theta else None
    params = [p for n, p in sae.named_parameters() if not (log_t is not None and n == "threshold")]
    opt, lr = Adam(params + ([log_t] if log_t is not None else [])), phase.lr or cfg.lr
    schedule = cosine_lr if phase.schedule == "cosine" else (lambda i, n: linear_tail_lr(i, n, LR_DECAY_TAIL))
    since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=x.device)
    use_aux = phase.activation == "topk" and cfg.aux_k_coef > 0
    step0 = history[-1]["step"] if history else 0
    if phase.kl_coef > 0 and readout is None:
        raise ValueError(f"phase {phase.name} has kl_coef {phase.kl_coef} but no readout")
    kl_start = horizon - round(phase.kl_epochs * per_epoch) if phase.kl_epochs is not None else 0
    for s, (xb, rows) in enumerate(tqdm(batches(x, cfg.batch_size, steps, gen), total=steps, desc=desc,
                                        leave=False)):
        opt.zero_grad()
        if log_t is not None:
            log_t.grad = None
        kl = (readout, phase.kl_coef, rows) if phase.kl_coef > 0 and s >= kl_start else None
        lam = phase.lam * min(1.0, (s + 1) / warm_steps) if phase.lam_warmup else phase.lam
        if phase.activation == "jumprelu":
            preact = (phase.preact_coef, since_fired > cfg.revive_after) if phase.preact_coef else None
            f, x_hat = jumprelu_grads(sae, xb, lam, kl, preact, cfg.matryoshka, cfg.matryoshka_weight)
        else:
            f, x_hat = autograd_grads(sae, xb, lam, cfg.aux_k_coef if use_aux else 0.0,
                                      since_fired > cfg.dead_steps, kl, cfg.matryoshka, cfg.matryoshka_weight)
        if log_t is not None:  # d/d log θ = θ · d/dθ
            log_t.grad = sae.threshold.grad * sae.threshold.detach()
            sae.threshold.grad = None
        if phase.grad_clip:
            clip_grad_norm(params + ([log_t] if log_t is not None else []), phase.grad_clip)
        opt.step(lr * schedule(s, horizon))
        with torch.no_grad():
            if phase.unit_decoder:
                sae.normalize_decoder()
            if log_t is not None:
                sae.threshold.copy_(log_t.exp())
            else:
                sae.threshold.clamp_(min=1e-3)  # θ must stay positive for f = pre·H(pre-θ) to be a JumpReLU
            # f >= 0 for all three activations, so a positive column sum means the latent fired in this batch
            since_fired.add_(1).masked_fill_(f.sum(0) > 0, 0)
        if history is not None and (s % LOG_EVERY == 0 or s == steps - 1):
            with torch.no_grad():
                mse = (xb - x_hat).pow(2).sum(-1).mean()  # the batch's, before this step's update
                loss = mse + sparsity_loss(sae, f, f > 0, lam)
            with torch.no_grad():
                kl_batch = readout.kl(xb, x_hat, rows).item() if readout is not None else float("nan")
            if kl:
                loss = loss + kl[1] * kl_batch
            history.append({
                "step": step0 + s + 1, "phase": phase.name or phase.activation, "loss": round(float(loss), 5),
                "mse": round(mse.item(), 5), "l0": round(l0(f), 3), "fvu": round(fvu(xb, x_hat), 5),
                "kl": round(kl_batch, 6), "dead_frac": round((since_fired > cfg.dead_steps).float().mean().item(), 5),
                "lambda": round(lam, 6), "lr": round(lr * schedule(s, horizon), 8),
            })
        if gate is not None and s + 1 == gate[0] and not gate[1](sae):
            return False
    return True


@torch.no_grad()
def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> None:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``: torch's clip_grad_norm_
    without its foreach/dynamo machinery, which costs ~0.3 ms against ~0.2 ms here on this SAE's five tensors
    (2 CPU cores), a few percent of a training step."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    scale = max_norm / (float(norm) + 1e-6)
    if scale < 1:
        for g in grads:
            g.mul_(scale)


def nested_bounds(d_sae: int, prefixes: list[int] | tuple[int, ...]) -> list[int]:
    """``[0, m_1, ..., m_k, d_sae]``: the edges of the Matryoshka blocks (``[0, d_sae]`` for a plain SAE)."""
    return [0, *prefixes, d_sae]


def nested_weights(n_blocks: int, prefix_weight: float) -> list[float]:
    """The weight of each prefix's loss in the Matryoshka mean: ``prefix_weight`` for every proper prefix, 1 for the
    whole dictionary, normalised to sum 1 (equal weights, 1/n each, when ``prefix_weight`` is 1)."""
    ws = [prefix_weight] * (n_blocks - 1) + [1.0]
    total = sum(ws)
    return [w / total for w in ws]


def nested_mse(sae: SAE, f: torch.Tensor, xb: torch.Tensor, prefixes,
               prefix_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The reconstruction loss and the full reconstruction. Plain: mean over rows of ||x - x_hat||². Matryoshka
    (Bussmann et al. 2025, "Learning multi-level features with Matryoshka SAEs"): the weighted mean
    (``nested_weights``) of that loss over the nested prefixes' reconstructions ``x_hat_k = f[:, :m_k] @ W_dec[:m_k]
    + b_dec``, the whole dictionary being the last: the first latents must reconstruct on their own, so they learn
    the coarse, whole features. (A mean, not Bussmann et al.'s sum: the same optimum up to λ's scale, which
    calibration sets, and λ_init stays right.)"""
    bounds = nested_bounds(sae.d_sae, prefixes)
    ws = nested_weights(len(bounds) - 1, prefix_weight)
    x_hat, total = sae.b_dec, 0.0
    for a, b, w in zip(bounds, bounds[1:], ws):
        x_hat = x_hat + f[:, a:b] @ sae.W_dec[a:b]
        total = total + w * (x_hat - xb).pow(2).sum() / len(xb)
    return total, x_hat


def autograd_grads(sae: SAE, xb: torch.Tensor, lam: float, aux_coef: float, dead: torch.Tensor,
                   kl: tuple[Splice | Readout, float, torch.Tensor] | None = None, prefixes=(), prefix_weight=1.0):
    """Gradients (into ``.grad``) of reconstruction (``nested_mse``) + sparsity penalty (+ AuxK) through autograd:
    the TopK and ReLU/L1 phases, and the reference the JumpReLU's hand-written gradients are tested against.
    Returns detached ``(f, x_hat)``."""
    pre = sae.pre_acts(xb)
    f, h = sae.activate_l0(pre)
    if prefixes:
        mse, x_hat = nested_mse(sae, f, xb, prefixes, prefix_weight)
    else:
        x_hat = sae.decode(f)
        mse = F.mse_loss(x_hat, xb, reduction="sum") / len(xb)  # = mean over rows of ||x - x_hat||^2
    loss = mse + sparsity_loss(sae, f, h, lam)
    if aux_coef:
        loss = loss + aux_coef * auxk_loss(sae, xb, x_hat, pre, dead)
    if kl:
        loss = loss + kl[1] * kl[0].kl(xb, x_hat, kl[2])
    loss.backward()
    return f.detach(), x_hat.detach()


@torch.no_grad()
def jumprelu_grads(sae: SAE, xb: torch.Tensor, lam: float,
                   kl: tuple[Splice | Readout, float, torch.Tensor] | None = None,
                   preact: tuple[float, torch.Tensor] | None = None, prefixes=(), prefix_weight=1.0):
    """Gradients (into ``.grad``) of the JumpReLU loss ||x - x_hat||^2 + λ·Σ_i H(pre_i - θ_i) (batch means;
    paper eq. 9), plus ``coef·KL(base || spliced)`` when ``kl = (splice, coef, rows)``, plus the pre-activation loss
    ``c·Σ_i relu(θ_i - pre_i)·||W_dec,i||`` over the latents in ``dead`` when ``preact = (c, dead)`` (Anthropic's
    auxiliary loss for dead latents as SAELens applies it: it pulls a silent latent's pre-activations up and its
    threshold down until it fires again), in one pass without an autograd graph.

    Around the JumpReLU this is only the chain rule through the two affine maps; the STE pseudo-derivatives come
    from ``jumprelu_backward``, the same function autograd calls. At these sizes (a step is ~2 ms, five matmuls
    take 1 ms) autograd's graph bookkeeping is a fifth of a step; tests/test_sae.py checks these gradients
    against autograd through ``jumprelu`` and ``step``. With Matryoshka ``prefixes`` the reconstruction loss is
    ``nested_mse``'s: block j of the dictionary receives the sum of the residual gradients of every prefix that
    contains it, so the step costs the same matmuls as a plain one, done block by block. Returns ``(f, x_hat)``.
    """
    b = len(xb)
    pre = sae.pre_acts(xb)
    f, h = jumprelu_forward(pre, sae.threshold)
    if prefixes:
        bounds = nested_bounds(sae.d_sae, prefixes)
        blocks = list(zip(bounds, bounds[1:]))
        x_hat, grads = sae.b_dec, []
        for (lo, hi), w in zip(blocks, nested_weights(len(blocks), prefix_weight)):
            # each prefix's reconstruction and its loss gradient, 2·w_k·(x_hat_k - x) / B
            x_hat = x_hat + f[:, lo:hi] @ sae.W_dec[lo:hi]
            grads.append((x_hat - xb).mul_(2.0 * w / b))
        if kl:
            grads[-1] += kl[0].kl_grad(xb, x_hat, kl[1], kl[2])
        for j in range(len(grads) - 2, -1, -1):  # suffix sums: block j is in prefixes j, j+1, ...
            grads[j] += grads[j + 1]
        sae.W_dec.grad = torch.cat([f[:, lo:hi].t() @ g for (lo, hi), g in zip(blocks, grads)])
        sae.b_dec.grad = grads[0].sum(0)
        grad_f = torch.cat([g @ sae.W_dec[lo:hi].t() for (lo, hi), g in zip(blocks, grads)], dim=1)
    else:
        x_hat = sae.decode(f)
        grad_x_hat = (x_hat - xb).mul_(2.0 / b)
        if kl:
            grad_x_hat += kl[0].kl_grad(xb, x_hat, kl[1], kl[2])
        sae.W_dec.grad = f.t() @ grad_x_hat
        sae.b_dec.grad = grad_x_hat.sum(0)
        grad_f = grad_x_hat @ sae.W_dec.t()
    grad_pre, sae.threshold.grad = jumprelu_backward(pre, sae.threshold, h, sae.bandwidth, grad_f, lam / b)
    if preact is not None and bool(preact[1].any()):
        # only the dead latents' columns (a few of d_sae): the full-width version multiplied every other column
        # by zero, a third of the step (docs/speed.md)
        coef, dead = preact
        idx = dead.nonzero()[:, 0]
        w_dead = sae.W_dec[idx]
        norms = w_dead.norm(dim=1)  # [D]
        gap = (sae.threshold[idx] - pre[:, idx]).clamp_min_(0)  # [B, D]: relu(θ - pre)
        below = (gap > 0).to(pre.dtype) * (norms * (coef / b))
        grad_pre.index_add_(1, idx, below, alpha=-1)  # (index_add_, not `[:, idx] -=`: that writes all of B x M)
        sae.threshold.grad.index_add_(0, idx, below.sum(0))
        sae.W_dec.grad.index_add_(0, idx, (gap.sum(0) * (coef / b) / norms.clamp_min(1e-12))[:, None] * w_dead)
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


def starting_point(cfg: SAEConfig, x: torch.Tensor, seed: int, history: list[dict] | None = None) -> SAE:
    """Where the final training (and so each of its λ probes) starts.

    jumprelu with ``sae.recipe=warmstart``: ``sae.warmstart_epochs`` of TopK(k=target) training, then one global
    θ at the target L0. Everything else (jumprelu from scratch, topk, relu_l1): the seeded initialisation, unit-
    norm decoder rows, the encoder their transpose, θ = ``sae.theta_init``.
    """
    sae = new_sae(cfg, x, seed)
    if cfg.arch == "jumprelu" and cfg.recipe == "warmstart":
        run_phase(sae, x, Phase("topk", cfg.warmstart_epochs, name="topk_warmstart"), cfg, generator(seed, 3),
                  history, desc="sae topk warm start")
        init_threshold(sae, x[:8192], cfg.target_actives)
        sae.activation = "jumprelu"
    return sae


def final_phase(cfg: SAEConfig, lam: float) -> Phase:
    """The phase train_sae runs, ``sae.epochs`` in all for every arch and recipe. The KL term (``sae.kl_coef``)
    acts in the last ``sae.kl_epochs`` epochs, for every arch, so the baselines get the same fine-tune."""
    if cfg.arch == "jumprelu" and cfg.recipe == "scratch":
        return Phase("jumprelu", cfg.epochs, lam, "jumprelu", cfg.lr, cfg.kl_coef, cfg.kl_epochs,
                     schedule="linear_tail", lam_warmup=LAMBDA_WARMUP, preact_coef=cfg.preact_coef,
                     grad_clip=GRAD_CLIP, unit_decoder=False, log_theta=True)
    if cfg.arch == "jumprelu":  # after the warm start, a short STE fine-tune at sae.ste_lr
        ste = cfg.epochs - cfg.warmstart_epochs
        return Phase("jumprelu", ste, lam, "jumprelu_ste", cfg.ste_lr, cfg.kl_coef, min(cfg.kl_epochs, ste))
    activation = "topk" if cfg.arch == "topk" else "relu"
    return Phase(activation, cfg.epochs, lam, cfg.arch, kl_coef=cfg.kl_coef, kl_epochs=cfg.kl_epochs)


def train(cfg: SAEConfig, start: SAE, x: torch.Tensor, lam: float, seed: int,
          readout: Splice | Readout | None = None,
          start_history: list[dict] | None = None, gate: tuple[int, Callable[[SAE], bool]] | None = None
          ) -> tuple[SAE, list[dict], bool]:
    """The final run: a copy of the starting point trained with λ (``gate`` as in ``run_phase``). Returns the SAE,
    its training curve, which continues ``start_history`` (the warm start's, if any) so that one curve shows all of
    training, and whether it ran to the end."""
    sae, history = copy.deepcopy(start), list(start_history or [])
    phase = final_phase(cfg, lam)
    done = run_phase(sae, x, phase, cfg, generator(seed, 4), history, desc=f"sae {phase.name}", readout=readout,
                     gate=gate)
    return sae.eval(), history, done


def calibrate_and_train(cfg: SAEConfig, start: SAE, x_train: torch.Tensor, x_val: torch.Tensor, seed: int,
                        readout: Splice | Readout | None = None, start_history: list[dict] | None = None
                        ) -> tuple[SAE, list[dict], dict]:
    """The final SAE, with λ calibrated to the target L0 on the final run's own first epochs.

    A probe is the final run itself (same starting point, batches, schedule), stopped after ``sae.calib_epochs``
    to read its val L0: within ``sae.calib_tolerance`` of the target, the run simply goes on to the end, so a
    probe that lands costs nothing; otherwise the next λ starts a new run from the starting point. At L0 20 the
    first λ usually lands. Returns ``(sae, training curve, calibration record)``.

    jumprelu from scratch: L0 settles by about epoch 6 of 18 and then drifts by a few percent at most (measured,
    docs/recipes.md), and it falls with λ as a power law. (What settles it is the number of steps: Adam moves
    log θ by about lr a step, so from θ 0.01 to about 1 takes some 1,200 steps, 5.6 epochs of 55,000 at batch
    256. On much less data, raise ``sae.calib_epochs`` with ``sae.epochs``.) The first λ is ``sae.lambda_init``
    moved along the law to the target (``L0_EXPONENT``), and each next λ corrects the last along the same law.
    jumprelu after a warm start: log-uniform bisection of λ over [lambda_min, lambda_max], probes of at most
    ``calib_epochs`` of the STE phase (L0 moves slowly from there). relu_l1: the same bisection with full-length
    probes (its L0 is still falling late in training). topk has no λ. When no probe lands within
    ``sae.calib_probes``, the run with the best probe's λ is the result (trained to the end if it was stopped).
    """
    if cfg.arch == "topk":
        sae, history, _ = train(cfg, start, x_train, 0.0, seed, readout, start_history)
        return sae, history, {"lambda": 0.0, "converged": True, "probes": [],
                              "note": "topk has no sparsity penalty: k = sae.target_actives fixes L0"}
    phase = final_phase(cfg, 0.0)
    per_epoch = len(x_train) / cfg.batch_size
    steps = max(1, round(phase.epochs * per_epoch))
    probe_epochs = min(cfg.calib_epochs, phase.epochs) if cfg.arch == "jumprelu" else phase.epochs
    probe_steps = min(steps, max(1, round(probe_epochs * per_epoch)))
    target = cfg.target_actives
    power_law = cfg.arch == "jumprelu" and cfg.recipe == "scratch"
    lam = cfg.lambda_init * (target / 20.0) ** (-1.0 / L0_EXPONENT)  # lambda_init is λ at the default L0 20
    lo, hi = math.log(cfg.lambda_min), math.log(cfg.lambda_max)
    probes, finished = [], {}
    for i in range(cfg.calib_probes):
        if power_law:
            lam = min(max(lam, cfg.lambda_min), cfg.lambda_max)
            if probes and lam == probes[-1]["lambda"]:
                break  # pinned at a bound of [lambda_min, lambda_max]: another probe would repeat the last one
        else:
            lam = math.exp((lo + hi) / 2)
        def landed(sae: SAE) -> bool:
            ev = evaluate_split(sae, x_val)
            probes.append({"probe": len(probes) + 1, "lambda": lam, "l0": round(ev["l0"], 4),
                           "fvu": round(ev["fvu"], 5), "epochs": round(probe_steps / per_epoch, 4)})
            return abs(ev["l0"] - target) <= cfg.calib_tolerance * target

        sae, history, done = train(cfg, start, x_train, lam, seed, readout, start_history, (probe_steps, landed))
        if done:
            return sae, history, {"lambda": lam, "converged": True, "probes": probes}
        if probe_steps == steps:
            finished[len(probes) - 1] = (sae, history)  # a full-length probe is a finished run
        l0_now = probes[-1]["l0"]
        if power_law:
            # along the measured law, not a secant through two probes: a probe's L0 carries a few percent of noise,
            # and a secant through two close probes can fit any exponent (seen: -0.4, then a 2.5x jump in λ)
            lam *= (max(l0_now, 1e-3) / target) ** (1.0 / L0_EXPONENT)
        else:
            lo, hi = (math.log(lam), hi) if l0_now > target else (lo, math.log(lam))
    best = min(range(len(probes)), key=lambda j: abs(probes[j]["l0"] - target))
    lam = probes[best]["lambda"]
    sae, history = finished[best] if best in finished else train(cfg, start, x_train, lam, seed, readout,
                                                                 start_history)[:2]
    return sae, history, {"lambda": lam, "converged": False, "probes": probes}


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
