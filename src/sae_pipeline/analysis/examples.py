"""What a latent responds to in input space: example images across its activation range, and input gradients."""
from __future__ import annotations

import torch

from ..base import preprocess
from ..sae import SAE
from ..zoo import N_PIXELS, SIDE, Site

# Below the top examples, the browser shows examples from these activation-quantile bands of a latent's firings
# (so a reader sees what a typical and a weak firing looks like, not only the strongest), BAND_SAMPLES each.
BANDS = ((0.75, 0.9), (0.5, 0.75), (0.25, 0.5), (0.0, 0.25))
BAND_SAMPLES = 2


def top_examples(f: torch.Tensor, k: int) -> list[list[int]]:
    """Per latent, the indices of its k highest activations (only inputs where it fires), highest first."""
    vals, idx = f.topk(min(k, len(f)), dim=0)  # [k, U]
    return [idx[:, u][vals[:, u] > 0].tolist() for u in range(f.shape[1])]


def band_examples(f: torch.Tensor, gen: torch.Generator) -> list[list[tuple[str, int]]]:
    """Per latent, ``BAND_SAMPLES`` random firing inputs from each activation-quantile band in ``BANDS``:
    a list of (band label, input index), strongest band first."""
    out = []
    for u in range(f.shape[1]):
        rows = (f[:, u] > 0).nonzero()[:, 0]
        order = rows[f[rows, u].argsort()]  # ascending activation
        picks = []
        for lo, hi in BANDS:
            a, b = int(lo * len(order)), int(hi * len(order))
            if b > a:
                choice = torch.randperm(b - a, generator=gen)[:BAND_SAMPLES] + a
                picks += [(f"q{int(lo * 100)}-{int(hi * 100)}", int(order[i])) for i in sorted(choice.tolist())]
        out.append(picks)
    return out


def input_gradients(sae: SAE, site: Site, pixels: torch.Tensor, card: dict, tops: list[list[int]]) -> torch.Tensor:
    """[U, 28, 28]: d pre_i / d pixel through the model up to the site and the encoder, averaged over each
    latent's top examples (zeros for a latent without any). Pixels in [0, 255] units of the raw image."""
    owner = torch.tensor([u for u, t in enumerate(tops) for _ in t], dtype=torch.long)
    rows = torch.tensor([j for t in tops for j in t], dtype=torch.long)
    out = torch.zeros(len(tops), N_PIXELS)
    if len(rows):
        x = preprocess(pixels[rows], card["input_mean"], card["input_std"]).requires_grad_(True)
        pre = sae.pre_acts(site.acts(x)[0])
        pre.gather(1, owner[:, None]).sum().backward()
        grad = x.grad / (255.0 * card["input_std"])  # chain rule through x = (pixels/255 - mean)/std
        out.index_add_(0, owner, grad.detach())
        out /= torch.bincount(owner, minlength=len(tops)).clamp_min(1)[:, None]
    return out.reshape(-1, SIDE, SIDE)


def mean_images(pixels: torch.Tensor, tops: list[list[int]]) -> torch.Tensor:
    """[U, 28, 28]: the mean of each latent's top examples (zeros where none)."""
    out = torch.zeros(len(tops), SIDE, SIDE)
    for u, t in enumerate(tops):
        if t:
            out[u] = pixels[t].float().mean(0)
    return out
