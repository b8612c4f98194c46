"""The base classifier on a planted problem: both hidden layers (ReLU and GeGLU) train, and the activations the
SAE reads are the hidden layer the card describes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sae_pipeline import activations, base
from sae_pipeline.config import ActivationsConfig, BaseConfig


def _images(n=3000, seed=0):
    """Digit c lights the c-th 28-pixel row (plus noise): separable, so a working model learns it in an epoch."""
    g = np.random.default_rng(seed)
    y = g.integers(0, 10, n)
    x = g.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    x[np.arange(n), y * 2] = 255
    return x, y.astype(np.int64)


@pytest.mark.parametrize("ffn_type", ["relu", "geglu"])
def test_both_hidden_layers_train_and_their_activations_are_the_hidden_layer(ffn_type):
    x_np, y_np = _images()
    cfg = BaseConfig(ffn_type=ffn_type, hidden_dim=16, epochs=1, batch_size=64)
    mean, std = float(x_np.mean() / 255), float(x_np.std() / 255)
    x, y = base.preprocess(x_np, mean, std), torch.from_numpy(y_np)
    model, history = base.train(cfg, x, y, seed=0, device=torch.device("cpu"))
    assert model.fc1.out_features == (32 if ffn_type == "geglu" else 16)
    acc = (base.predict(model, x) == y).float().mean().item()
    assert acc > 0.9, acc
    card = base.model_card(cfg, mean, std)
    data = {f"x_{s}": x_np for s in ("train", "val", "test")}
    h = activations.collect(model, card, data)["h_test"]
    z = model.fc1(x).detach()
    want = F.gelu(z[:, :16]) * z[:, 16:] if ffn_type == "geglu" else F.relu(z)  # the card's formula, by hand
    assert h.shape == (len(x_np), 16) and np.allclose(h, want.numpy(), atol=1e-6)
    assert torch.allclose(model.fc2(torch.from_numpy(h)), model(x), atol=1e-5)  # logits = fc2(hidden)
    if ffn_type == "geglu":
        assert (h < 0).any()  # GeGLU units go negative, unlike ReLU's
    acts = activations.load_acts({"h_train": h, "h_val": h, "h_test": h}, ActivationsConfig())
    assert torch.allclose(acts.to_hidden(acts.test), torch.from_numpy(h), atol=1e-5)
    assert torch.allclose(acts.train.mean(0), torch.zeros(16), atol=1e-4)
