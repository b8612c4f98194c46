"""The model zoo: every architecture trains on a planted problem, every site splits the forward pass exactly
(``from_site(to_site(x)) == forward(x)``), the activations file holds what the card describes, and the general
splice (autograd through the rest of the model) equals the linear read-out shortcut where there is one."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sae_pipeline import activations, base, zoo
from sae_pipeline.config import ActivationsConfig, CNNConfig, MLPConfig, ViTConfig
from sae_pipeline.sae_train import Readout, Splice, splice_for

CONFIGS = {
    "mlp-relu": MLPConfig(ffn_type="relu", hidden_dim=16, epochs=1, batch_size=64),
    "mlp-geglu": MLPConfig(ffn_type="geglu", hidden_dim=16, epochs=1, batch_size=64),
    "cnn": CNNConfig(arch="cnn", channels=[4, 8], pool_grid=7, hidden_dim=16, epochs=2, batch_size=64, lr=0.01),
    "vit": ViTConfig(arch="vit", width=16, depth=2, heads=2, mlp_dim=32, epochs=4, batch_size=64, lr=0.01),
}


def _images(n=3000, seed=0):
    """Digit c lights the 2c-th pixel row (plus noise): separable, so a working model learns it quickly."""
    g = np.random.default_rng(seed)
    y = g.integers(0, 10, n)
    x = g.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    x[np.arange(n), y * 2] = 255
    return x, y.astype(np.int64)


def _card(cfg):
    return base.model_card("m", cfg, 0.2, 0.3)


@pytest.fixture(scope="module")
def trained():
    x_np, y_np = _images()
    mean, std = float(x_np.mean() / 255), float(x_np.std() / 255)
    x, y = base.preprocess(x_np, mean, std), torch.from_numpy(y_np)
    out = {}
    for name, cfg in CONFIGS.items():
        card = base.model_card(name, cfg, mean, std)
        model, history = base.train(cfg, card, x, y, seed=0, device=torch.device("cpu"))
        out[name] = (model, card, history)
    return out, x_np, x, y


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_architecture_learns_the_planted_problem(trained, name):
    out, _, x, y = trained
    model, _, history = out[name]
    acc = (base.predict(model, x) == y).float().mean().item()
    assert acc > 0.9, (name, acc)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_site_splits_the_forward_pass_exactly(trained, name):
    out, x_np, x, _ = trained
    model, card, _ = out[name]
    assert set(card["sites"]) == set(model.site_names()) == set(CONFIGS[name].site_names())
    for s in model.site_names():
        site = zoo.Site(model, s)
        with torch.no_grad():
            h, ctx = site.acts(x[:200])
            assert h.shape == (200, card["sites"][s]["width"])
            assert torch.allclose(site.rest(h, ctx), model(x[:200]), atol=1e-5), s
            assert torch.allclose(model.all_sites(x[:200])[s], h, atol=1e-6), s  # the one-pass collection
    data = {f"x_{s}": x_np[:300] for s in ("train", "val", "test")}
    acts = activations.collect(model, card, data)
    assert sorted(acts) == sorted(activations.key(s, sp) for s in card["sites"] for sp in activations.SPLITS)
    with pytest.raises(KeyError, match="has no site"):
        zoo.Site(model, "nowhere")


def test_mlp_site_is_the_hidden_layer_the_card_describes(trained):
    out, x_np, x, _ = trained
    for name in ("mlp-relu", "mlp-geglu"):
        model, card, _ = out[name]
        h = activations.collect(model, card, {f"x_{s}": x_np for s in ("train", "val", "test")})["hidden_test"]
        z = model.fc1(x).detach()
        want = F.gelu(z[:, :16]) * z[:, 16:] if name == "mlp-geglu" else F.relu(z)  # the card's formula, by hand
        assert np.allclose(h, want.numpy(), atol=1e-6)
        assert (h < 0).any() == (name == "mlp-geglu")  # GeGLU units go negative, unlike ReLU's
        acts = activations.load_acts({f"hidden_{s}": h for s in ("train", "val", "test")}, "hidden",
                                     ActivationsConfig())
        assert torch.allclose(acts.to_hidden(acts.test), torch.from_numpy(h), atol=1e-5)
        assert torch.allclose(acts.train.mean(0), torch.zeros(16), atol=1e-4)


def test_vit_block_site_replaces_only_the_cls_token(trained):
    """Changing the CLS residual at block 1 changes the logits (the later block reads it) and equals a forward
    pass with that token edited by hand."""
    out, _, x, _ = trained
    model = out["vit"][0]
    site = zoo.Site(model, "block1")
    with torch.no_grad():
        h, ctx = site.acts(x[:50])
        bump = torch.randn(h.shape, generator=torch.Generator().manual_seed(0))
        got = site.rest(h + bump, ctx)
        t = model.tokens(x[:50])
        t = model.blocks[0](t)
        t[:, 0] += bump
        t = model.blocks[1](t)
        want = model.head(model.ln(t[:, 0]))
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, model(x[:50]), atol=1e-3)
    assert site.acts(x[:5])[1].shape == (5, 16, 16)  # the 16 patch tokens
    assert zoo.Site(model, "block2").acts(x[:5])[1] is None  # after the last block only CLS is read


def test_vit_last_block_cls_shortcut_equals_the_full_block(trained):
    """``Block.forward_cls`` (only the CLS row of the last block, what every forward pass reads) equals the full
    block's CLS row, values and gradients, so training and splicing through it are the general path."""
    out, _, x, _ = trained
    model = out["vit"][0]
    t = model.tokens(x[:64]).detach().requires_grad_(True)
    blk = model.blocks[-1]
    full, short = blk(t)[:, 0], blk.forward_cls(t)
    assert torch.allclose(short, full, atol=1e-5)
    w = torch.randn(full.shape, generator=torch.Generator().manual_seed(3))
    g_full = torch.autograd.grad((full * w).sum(), [t, *blk.parameters()])
    g_short = torch.autograd.grad((short * w).sum(), [t, *blk.parameters()])
    for a, b in zip(g_full, g_short):
        assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(g_full[0][:, 1:], torch.zeros(()))  # the patch tokens matter (as keys and values)


def test_precomputed_base_logits_give_the_same_kl(trained):
    """``Splice.with_base`` (the base logits of every training row computed once) is the same KL and gradient as
    computing them every step."""
    out, _, x, _ = trained
    s = zoo.Site(out["vit"][0], "block1")
    h, ctx = s.collect(x[:300])
    shift, scale = h.mean(0), h.std(0) + 0.5
    z = (h - shift) / scale
    rows = torch.randperm(300, generator=torch.Generator().manual_seed(4))[:64]
    z_hat = z[rows] + 0.3 * torch.randn(64, z.shape[1], generator=torch.Generator().manual_seed(5))
    each, once = splice_for(s, shift, scale, ctx), splice_for(s, shift, scale, ctx, z_train=z)
    assert once.base is not None and each.base is None
    assert torch.allclose(once.kl(z[rows], z_hat, rows), each.kl(z[rows], z_hat, rows), atol=1e-6)
    assert torch.allclose(once.kl_grad(z[rows], z_hat, 2.0, rows), each.kl_grad(z[rows], z_hat, 2.0, rows),
                          atol=1e-7)


@pytest.mark.parametrize("name,site", [("mlp-relu", "hidden"), ("cnn", "fc")])
def test_linear_readout_shortcut_equals_the_general_splice(trained, name, site):
    """The closed-form KL and its gradient (``Readout``) equal autograd through ``Site.rest`` (``Splice``)."""
    out, _, x, _ = trained
    s = zoo.Site(out[name][0], site)
    h, ctx = s.collect(x[:256])
    shift, scale = h.mean(0), h.std(0) + 0.5
    z = (h - shift) / scale
    z_hat = z + 0.3 * torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    rows = torch.arange(256)
    fast, general = splice_for(s, shift, scale, ctx), splice_for(s, shift, scale, ctx, general=True)
    assert isinstance(fast, Readout) and isinstance(general, Splice)
    assert torch.allclose(fast.kl(z, z_hat), general.kl(z, z_hat, rows), atol=1e-6)
    assert torch.allclose(fast.kl_grad(z, z_hat, 2.5), general.kl_grad(z, z_hat, 2.5, rows), atol=1e-7)


def test_general_splice_kl_grad_matches_finite_differences(trained):
    """Through the ViT's later block, with the patch tokens as context (float64)."""
    out, _, x, _ = trained
    model = out["vit"][0].double()
    try:
        s = zoo.Site(model, "block1")
        h, ctx = s.collect(x[:16].double())
        shift, scale = h.mean(0), h.std(0) + 0.5
        sp = Splice(s, shift, scale, ctx)
        z = (h - shift) / scale
        z_hat = z + 0.2 * torch.randn(z.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        rows = torch.arange(16)
        grad = sp.kl_grad(z, z_hat, 1.0, rows)
        eps = 1e-6
        for i, j in [(0, 0), (3, 5), (15, 15)]:
            e = torch.zeros_like(z_hat)
            e[i, j] = eps
            fd = (sp.kl(z, z_hat + e, rows) - sp.kl(z, z_hat - e, rows)) / (2 * eps)
            assert float(grad[i, j].detach()) == pytest.approx(float(fd.detach()), rel=1e-5, abs=1e-10)
    finally:
        model.float()
