"""Sparse probing: how well k units of a family classify each digit, one digit against the rest.

Protocol (after SAEBench's sparse probing, Karvonen et al. 2025, and Gurnee et al. 2023): for digit c, the k units
with the largest |mean activation on class c - mean on the other classes| on **train** are kept; a logistic
regression on them is fitted on train (features standardised with train statistics; L2 penalty with sklearn's
``C = 1``; class-balanced weights, since each digit is ~10% of the data) and scored on **test** by balanced
accuracy and F1 of the positive class. Reported: means over the ten digits. The dense ceiling is the same probe
on all hidden dimensions.

Why it is cheap: a probe has at most k + 1 <= 11 weights (129 for the dense one), so it is fitted by Newton's
method in closed form, all ten digits at once as one batched solve: a handful of [10, k+1, k+1] systems per k,
about 0.1 s for every family and k together on 55,000 rows, where fitting 200 sklearn probes takes tens of seconds.
"""
from __future__ import annotations

import torch

KS = (1, 2, 5, 10)


def mean_diff_ranking(x: torch.Tensor, y: torch.Tensor, k: int, n_classes: int = 10) -> torch.Tensor:
    """[C, k]: per class, the k columns of x with the largest |mean on the class - mean on the rest|, largest
    first (float64 means). The k-unit probe of class c uses the first k entries of row c."""
    onehot = torch.nn.functional.one_hot(y, n_classes).double()  # [N, C]
    n_pos = onehot.sum(0)
    sums = onehot.T @ x.double()  # [C, U]
    mean_pos = sums / n_pos[:, None]
    mean_neg = (sums.sum(0, keepdim=True) - sums) / (len(y) - n_pos)[:, None]
    return (mean_pos - mean_neg).abs().topk(min(k, x.shape[1]), dim=1).indices


WARM_ROWS = 16384  # above this many rows, Newton starts from the fit on a strided subsample (see fit_logistic)
WARM_STRIDE = 8


def fit_logistic(x: torch.Tensor, t: torch.Tensor, c: float = 1.0, iters: int = 30, tol: float = 1e-8,
                 w0: torch.Tensor | None = None) -> torch.Tensor:
    """Batched L2 logistic regression by damped Newton, class-balanced weights.

    x: [B, N, d] features per problem, or [N, d] shared by all B problems; t: [B, N] bool targets. Minimises
    0.5·||w||² + c·Σ_i s_i·logloss_i (bias unpenalised) with s_i = N / (2·N_{t_i}): sklearn's
    ``LogisticRegression(C=c, class_weight="balanced")`` (tests check it). Returns [B, d+1]: weights, then bias.
    The Hessian is formed in float32: it only sets the step direction, and the gradient and objective are float64,
    so Newton still converges to the float64 optimum.

    On many rows, Newton starts (``w0``) from the optimum of every ``WARM_STRIDE``-th row, with the penalty scaled
    by the same factor so that the subsample's objective estimates the full one: that start is within a step or
    two of the full optimum, where Newton converges quadratically, so most iterations cost an eighth (the dense
    probe's Hessian, 10 x 130 x 130 over 55,000 rows, is most of the baselines stage otherwise). The stopping rule
    is the full data's gradient, so the optimum is the same.
    """
    if w0 is None and t.shape[1] > WARM_ROWS:
        sub = x[..., ::WARM_STRIDE, :]
        w0 = fit_logistic(sub, t[:, ::WARM_STRIDE], c * WARM_STRIDE, iters, tol)
    shared = x.dim() == 2
    b, n = t.shape
    d = x.shape[-1]
    ones = torch.ones(*x.shape[:-1], 1, dtype=torch.float64)
    xb = torch.cat([x.double(), ones], dim=-1).contiguous()
    xb32 = xb.float()
    tf = t.double()
    n_pos = tf.sum(1, keepdim=True)
    s = torch.where(t, n / (2 * n_pos.clamp_min(1)), n / (2 * (n - n_pos).clamp_min(1))) * c
    sign = 1 - 2 * tf  # logloss = softplus(sign * z)
    reg = torch.eye(d + 1, dtype=torch.float64)
    reg[d, d] = 0.0
    w = torch.zeros(b, d + 1, dtype=torch.float64) if w0 is None else w0.clone()

    def matvec(v):  # [B, d+1] -> [B, N]
        return v @ xb.T if shared else (xb @ v[..., None])[..., 0]

    def grad_of(r):  # [B, N] -> [B, d+1]
        return r @ xb if shared else (xb.transpose(1, 2) @ r[..., None])[..., 0]

    def hess_of(a):  # [B, N] curvature weights -> [B, d+1, d+1]
        a = a.float()
        if shared:  # a loop of B matmuls: half the time of the equivalent einsum here (0.3 vs 0.63 s at d=129)
            return torch.stack([(xb32 * ai[:, None]).T @ xb32 for ai in a]).double()
        return ((xb32 * a[..., None]).transpose(1, 2) @ xb32).double()

    def objective(w, z):
        return (s * torch.nn.functional.softplus(sign * z)).sum(1) + 0.5 * (w[:, :d] ** 2).sum(1)

    z = torch.zeros(b, n, dtype=torch.float64) if w0 is None else matvec(w)
    obj = objective(w, z)
    for _ in range(iters):
        p = torch.sigmoid(z)
        grad = grad_of(s * (p - tf)) + w @ reg
        if float(grad.abs().max()) < tol * n:
            break
        # one solve per problem: torch 2.14's batched solve through MKL fails on [10, 289, 289] systems (MKL reports
        # "Parameter 6 was incorrect on entry to DLASWP" and never returns), and it gives the same bytes as these
        hess = hess_of(s * p * (1 - p)) + reg
        step = torch.stack([torch.linalg.solve(hess[i], grad[i]) for i in range(b)])
        dz = matvec(step)
        # halve the step where the objective would rise (Newton on separable or badly scaled data)
        scale = torch.ones(b, 1, dtype=torch.float64)
        for _ in range(30):
            new = objective(w - scale * step, z - scale * dz)
            bad = new > obj
            if not bad.any():
                break
            scale = torch.where(bad[:, None], scale / 2, scale)
        w, z, obj = w - scale * step, z - scale * dz, new
    return w


def _scores(pred: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] balanced accuracy and F1 of 0/1 predictions against 0/1 targets, per row."""
    tp = (pred & t).sum(1).double()
    fp = (pred & ~t).sum(1).double()
    fn = (~pred & t).sum(1).double()
    tn = (~pred & ~t).sum(1).double()
    bal = 0.5 * (tp / (tp + fn).clamp_min(1) + tn / (tn + fp).clamp_min(1))
    f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
    return bal, f1


def probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
          cols: torch.Tensor | None, n_classes: int = 10) -> dict:
    """One-vs-rest probes on ``cols`` ([C, k] chosen columns per class; None = all columns, the dense probe)."""
    classes = torch.arange(n_classes)
    t_tr = y_train[None, :] == classes[:, None]
    t_te = y_test[None, :] == classes[:, None]
    if cols is None:  # one feature matrix shared by every class
        xtr, xte = x_train.double(), x_test.double()
        mu, sd = xtr.mean(0), xtr.std(0)
    else:
        xtr = x_train[:, cols].permute(1, 0, 2).double()  # [C, N, k]
        xte = x_test[:, cols].permute(1, 0, 2).double()
        mu, sd = xtr.mean(1, keepdim=True), xtr.std(1, keepdim=True)
    sd = torch.where(sd > 0, sd, 1.0)
    w = fit_logistic((xtr - mu) / sd, t_tr)
    xs = (xte - mu) / sd
    z = (w[:, :-1] @ xs.T if cols is None else (xs @ w[:, :-1, None])[..., 0]) + w[:, -1:]
    bal, f1 = _scores(z > 0, t_te)
    out = {"balanced_accuracy": round(float(bal.mean()), 6), "f1": round(float(f1.mean()), 6),
           "per_class_balanced_accuracy": [round(float(v), 6) for v in bal]}
    if cols is None:  # the dense probes in the site's own coordinates, logit = x·weight + bias (absorption.py)
        out["weight"] = w[:, :-1] / sd
        out["bias"] = w[:, -1] - (mu / sd) @ w[:, :-1].T
    return out


def sparse_probing(acts_train: torch.Tensor, y_train: torch.Tensor, acts_test: torch.Tensor, y_test: torch.Tensor,
                   ks=KS) -> dict:
    """{k: {"balanced_accuracy", "f1"}} for one unit family."""
    ranking = mean_diff_ranking(acts_train, y_train, max(ks))
    out = {}
    for k in ks:
        r = probe(acts_train, y_train, acts_test, y_test, ranking[:, :k])
        out[str(k)] = {"balanced_accuracy": r["balanced_accuracy"], "f1": r["f1"]}
    return out
