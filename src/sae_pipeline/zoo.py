"""The classifiers an SAE explains, and the one interface every analysis goes through: a *site* of a model.

Every model takes the preprocessed image flattened to ``x: [B, 784]`` and returns logits ``[B, 10]``, and names
its sites. A site is a point in the forward pass with one activation vector per image:

- ``to_site(x, name) -> (h, ctx)``: the activations ``h: [B, width]`` there, and whatever else the rest of the
  model needs from the same image (``ctx``; ``None`` when ``h`` is all of it);
- ``from_site(h, ctx, name) -> logits``: the rest of the model from the site onward, with ``h`` replaced.

So ``from_site(*to_site(x, s), s) == forward(x)`` for every site (tests/test_zoo.py), and splicing an SAE is
``from_site(sae(h), ctx, s)``. Fidelity, the KL term of SAE training, θ tuning, causal effects and input
gradients all use these two calls (``Site`` below). ``readout(name)`` gives the linear layer when the rest of the
model is one (the MLP's ``hidden``, the CNN's ``fc``): an optimisation that callers may use, tested equal to the
general path.

Architectures (``arch`` in a model's section of params.yaml):

- ``mlp``: ``hidden = act(fc1(x))``, ``logits = fc2(hidden)``; ReLU or GeGLU (Shazeer 2020: fc1 emits 2*hidden
  units split into (gate, up), ``hidden = gelu(gate) * up``). Site ``hidden``.
- ``cnn``: two conv blocks (3x3 conv, ReLU, 2x2 max-pool), global average pooling, a hidden fc layer, the
  classifier. Sites ``pool`` (the pooled channels of the last conv block, what the fc head reads) and ``fc``.
- ``vit``: 7x7 patches (16 tokens) linearly embedded, a CLS token, learned positions, pre-norm transformer blocks
  (Dosovitskiy et al. 2021), a final LayerNorm and a linear head on the CLS token. Sites ``block1`` ..
  ``block<depth>``: the CLS token's residual stream after that block; its ``ctx`` is the patch tokens there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SIDE, N_PIXELS, N_CLASSES = 28, 784, 10
# Rows per forward pass where many are run without a gradient (collection, splicing, interventions): small batches
# keep the ViT's [rows, 17, width] intermediates in cache, about twice as fast as 8,192 rows (docs/speed.md).
CHUNK = 512


class Classifier(nn.Module):
    arch = ""

    def site_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def site_width(self, name: str) -> int:
        raise NotImplementedError

    def to_site(self, x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def from_site(self, h: torch.Tensor, ctx: torch.Tensor | None, name: str) -> torch.Tensor:
        raise NotImplementedError

    def readout(self, name: str) -> nn.Linear | None:
        """The linear layer that is all of the model after the site, or None."""
        return None

    def all_sites(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{site: to_site(x, site)[0]}`` for every site; architectures with several sites do it in one pass."""
        return {s: self.to_site(x, s)[0] for s in self.site_names()}

    def check_site(self, name: str) -> None:
        if name not in self.site_names():
            raise KeyError(f"{self.arch} has no site {name!r}; its sites: {', '.join(self.site_names())}")


class MLP(Classifier):
    arch = "mlp"

    def __init__(self, ffn_type: str = "relu", hidden_dim: int = 128, d_in: int = N_PIXELS,
                 n_classes: int = N_CLASSES):
        super().__init__()
        self.ffn_type = ffn_type
        self.fc1 = nn.Linear(d_in, hidden_dim * (2 if ffn_type == "geglu" else 1))
        self.fc2 = nn.Linear(hidden_dim, n_classes)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc1(x)
        if self.ffn_type == "geglu":
            gate, up = z.chunk(2, dim=-1)
            return F.gelu(gate) * up
        return F.relu(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.hidden(x))

    def site_names(self):
        return ("hidden",)

    def site_width(self, name):
        self.check_site(name)
        return self.fc2.in_features

    def to_site(self, x, name):
        self.check_site(name)
        return self.hidden(x), None

    def from_site(self, h, ctx, name):
        self.check_site(name)
        return self.fc2(h)

    def readout(self, name):
        self.check_site(name)
        return self.fc2


class CNN(Classifier):
    arch = "cnn"

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden_dim: int = 128, pool_grid: int = 3,
                 n_classes: int = N_CLASSES):
        super().__init__()
        c1, c2 = channels
        self.pool_grid = pool_grid
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * pool_grid ** 2, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, n_classes)
        # channels-last conv weights make every feature map channels-last, where oneDNN's convolutions and the
        # max-pools are vectorised over channels: a training step ~20% faster on 2 CPU cores (docs/speed.md)
        self.to(memory_format=torch.channels_last)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        z = F.max_pool2d(F.relu(self.conv1(x.view(-1, 1, SIDE, SIDE))), 2)
        z = F.max_pool2d(F.relu(self.conv2(z)), 2)
        return F.adaptive_max_pool2d(z, self.pool_grid).flatten(1)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(self.pooled(x))))

    def site_names(self):
        return ("pool", "fc")

    def site_width(self, name):
        self.check_site(name)
        return self.fc1.in_features if name == "pool" else self.fc1.out_features

    def to_site(self, x, name):
        self.check_site(name)
        p = self.pooled(x)
        return (p if name == "pool" else F.relu(self.fc1(p))), None

    def from_site(self, h, ctx, name):
        self.check_site(name)
        return self.fc2(F.relu(self.fc1(h)) if name == "pool" else h)

    def all_sites(self, x):
        p = self.pooled(x)
        return {"pool": p, "fc": F.relu(self.fc1(p))}

    def readout(self, name):
        self.check_site(name)
        return self.fc2 if name == "fc" else None


class Block(nn.Module):
    """Pre-norm transformer block: ``t = t + attn(ln1(t))``, ``t = t + mlp(ln2(t))`` (GELU MLP)."""

    def __init__(self, width: int, heads: int, mlp_dim: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, mlp_dim), nn.Linear(mlp_dim, width)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        q, k, v = self.qkv(self.ln1(t)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        t = t + self.proj(a)
        return t + self.fc2(F.gelu(self.fc1(self.ln2(t))))

    def forward_cls(self, t: torch.Tensor) -> torch.Tensor:
        """``forward(t)[:, 0]`` (the CLS token's output, ``[B, width]``) without the other tokens' outputs: the
        last block's only row anything reads. Every token still gives its key and value, but only CLS asks a query
        and goes through the projection and MLP: about a quarter of the block's arithmetic."""
        b, n, d = t.shape
        hd = d // self.heads
        x = self.ln1(t)
        w, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, :1], w[:d], bias[:d]).view(b, 1, self.heads, hd).transpose(1, 2)
        k, v = F.linear(x, w[d:], bias[d:]).view(b, n, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        c = t[:, 0] + self.proj(F.scaled_dot_product_attention(q, k, v).reshape(b, d))
        return c + self.fc2(F.gelu(self.fc1(self.ln2(c))))


class ViT(Classifier):
    arch = "vit"

    def __init__(self, width: int = 64, depth: int = 4, heads: int = 4, mlp_dim: int = 128, patch: int = 7,
                 n_classes: int = N_CLASSES):
        super().__init__()
        self.patch, self.grid = patch, SIDE // patch
        self.embed = nn.Linear(patch * patch, width)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, self.grid ** 2 + 1, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_dim) for _ in range(depth))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1 + grid², width]: CLS then the patches in row-major order, positions added."""
        g, p = self.grid, self.patch
        patches = x.view(-1, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(-1, g * g, p * p)
        t = self.embed(patches)
        return torch.cat([self.cls.expand(len(t), -1, -1), t], 1) + self.pos

    def _depth(self, name: str) -> int:
        self.check_site(name)
        return int(name[len("block"):])

    def cls_out(self, t: torch.Tensor, first: int) -> torch.Tensor:
        """The CLS token after the last block, from the tokens ``t`` entering block ``first`` (0-based)."""
        for blk in self.blocks[first:-1]:
            t = blk(t)
        return self.blocks[-1].forward_cls(t)

    def forward(self, x):
        return self.head(self.ln(self.cls_out(self.tokens(x), 0)))

    def site_names(self):
        return tuple(f"block{i + 1}" for i in range(len(self.blocks)))

    def site_width(self, name):
        self._depth(name)
        return self.head.in_features

    def to_site(self, x, name):
        k = self._depth(name)
        t = self.tokens(x)
        if k == len(self.blocks):  # after the last block only the CLS token is read, so nothing else is needed
            return self.cls_out(t, 0), None
        for blk in self.blocks[:k]:
            t = blk(t)
        return t[:, 0], t[:, 1:]

    def from_site(self, h, ctx, name):
        k = self._depth(name)
        if k == len(self.blocks):
            return self.head(self.ln(h))
        return self.head(self.ln(self.cls_out(torch.cat([h[:, None], ctx], 1), k)))

    def all_sites(self, x):
        t, out = self.tokens(x), {}
        for i, blk in enumerate(self.blocks[:-1]):
            t = blk(t)
            out[f"block{i + 1}"] = t[:, 0]
        out[f"block{len(self.blocks)}"] = self.blocks[-1].forward_cls(t)
        return out


def build(card: dict) -> Classifier:
    """The model a card describes (untrained)."""
    a = card["architecture"]
    if a == "mlp":
        return MLP(card["ffn_type"], card["hidden_dim"])
    if a == "cnn":
        return CNN(tuple(card["channels"]), card["hidden_dim"], card["pool_grid"])
    if a == "vit":
        return ViT(card["width"], card["depth"], card["heads"], card["mlp_dim"], card["patch"])
    raise ValueError(f"unknown architecture {a!r}")


@dataclass
class Site:
    """A named site of a model: its activations, and the rest of the model from there (see the module doc)."""

    model: Classifier
    name: str

    def __post_init__(self):
        self.model.check_site(self.name)

    @property
    def width(self) -> int:
        return self.model.site_width(self.name)

    def acts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model.to_site(x, self.name)

    def rest(self, h: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        return self.model.from_site(h, ctx, self.name)

    def readout(self) -> nn.Linear | None:
        return self.model.readout(self.name)

    @torch.no_grad()
    def collect(self, x: torch.Tensor, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(h, ctx) of every row of ``x``, in chunks."""
        hs, cs = [], []
        for i in range(0, len(x), chunk):
            h, c = self.acts(x[i:i + chunk])
            hs.append(h)
            cs.append(c)
        return torch.cat(hs), (torch.cat(cs) if cs[0] is not None else None)

    @torch.no_grad()
    def logits(self, h: torch.Tensor, ctx: torch.Tensor | None, chunk: int = CHUNK) -> torch.Tensor:
        """The rest of the model on every row, in chunks."""
        return torch.cat([self.rest(h[i:i + chunk], None if ctx is None else ctx[i:i + chunk])
                          for i in range(0, len(h), chunk)])
