"""The MNIST classifier whose hidden layer the SAE explains: 784 -> hidden -> 10, ReLU or GeGLU."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .config import BaseConfig
from .io import load_json
from .optim import Adam, one_cycle_lr
from .runtime import generator


class MLP(nn.Module):
    """``hidden = act(fc1(x))``, ``logits = fc2(hidden)``.

    GeGLU (Shazeer 2020): fc1 emits 2*hidden units, split into (gate, up), ``hidden = gelu(gate) * up``.
    """

    def __init__(self, ffn_type: str = "relu", hidden_dim: int = 128, d_in: int = 784, n_classes: int = 10):
        super().__init__()
        self.ffn_type = ffn_type
        self.fc1 = nn.Linear(d_in, hidden_dim * (2 if ffn_type == "geglu" else 1))
        self.fc2 = nn.Linear(hidden_dim, n_classes)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 784) preprocessed -> (B, hidden)
        z = self.fc1(x)
        if self.ffn_type == "geglu":
            gate, up = z.chunk(2, dim=-1)
            return F.gelu(gate) * up
        return F.relu(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.hidden(x))


def preprocess(pixels: np.ndarray | torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 [N,28,28] -> float32 [N,784], ``x = (pixels/255 - mean) / std`` (stated in base.json)."""
    x = torch.as_tensor(pixels).reshape(len(pixels), -1).float() / 255.0
    return (x - mean) / std


def model_card(cfg: BaseConfig, mean: float, std: float) -> dict:
    """The JSON saved next to base.pt: enough to rebuild the model and feed it correctly."""
    return {
        "architecture": "mlp",
        "ffn_type": cfg.ffn_type,
        "d_in": 784,
        "hidden_dim": cfg.hidden_dim,
        "n_classes": 10,
        "hidden": "gelu(gate)*up with (gate, up) = fc1(x).chunk(2)" if cfg.ffn_type == "geglu" else "relu(fc1(x))",
        "logits": "fc2(hidden)",
        "preprocessing": "x = (pixels/255 - input_mean) / input_std, pixels uint8 [N,28,28] flattened to [N,784]",
        "input_mean": mean,
        "input_std": std,
    }


CARD_KEYS = ("architecture", "ffn_type", "d_in", "hidden_dim", "n_classes", "input_mean", "input_std")


def load_card(path) -> dict:
    """base.json, with every key the readers use checked (a one-line error names a missing one)."""
    return load_json(path, CARD_KEYS)


def load_model(state_dict: dict, card: dict) -> MLP:
    model = MLP(card["ffn_type"], card["hidden_dim"], card["d_in"], card["n_classes"])
    model.load_state_dict(state_dict)
    return model.eval()


@torch.no_grad()
def predict(model: MLP, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]).argmax(-1) for i in range(0, len(x), batch)])


def train(cfg: BaseConfig, x: torch.Tensor, y: torch.Tensor, seed: int, device: torch.device):
    """Adam with a one-cycle schedule (Smith 2018): reaches >=97.5% test accuracy in 3 epochs where flat Adam 1e-3
    stops near 97.4%. Returns the model and a per-step history (loss, accuracy) for the DVC plot."""
    torch.manual_seed(seed)  # nn.Linear init draws from the global generator; seed it explicitly
    model = MLP(cfg.ffn_type, cfg.hidden_dim).to(device)
    opt = Adam(model.parameters(), weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(x) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    gen, history, step = generator(seed, 1), [], 0
    x, y = x.to(device), y.to(device)
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=gen).to(device)
        for i in tqdm(range(0, len(x), cfg.batch_size), desc=f"base epoch {epoch + 1}/{cfg.epochs}", leave=False):
            idx = perm[i:i + cfg.batch_size]
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step(cfg.lr * one_cycle_lr(step, total))
            step += 1
            if step % 50 == 0 or step == total:
                acc = (logits.argmax(-1) == y[idx]).float().mean().item()
                history.append({"step": step, "epoch": epoch + 1, "loss": round(loss.item(), 6), "acc": round(acc, 6)})
    return model.eval(), history


def evaluate(model: MLP, x_val, y_val, x_test, y_test, final_loss: float) -> tuple[dict, list[dict]]:
    """metrics/base.json content and the confusion rows (actual, predicted) for DVC's confusion template."""
    pred_val, pred_test = predict(model, x_val), predict(model, x_test)
    per_class = {str(c): round((pred_test[y_test == c] == c).float().mean().item(), 6) for c in range(10)}
    metrics = {
        "test_acc": round((pred_test == y_test).float().mean().item(), 6),
        "val_acc": round((pred_val == y_val).float().mean().item(), 6),
        "per_class_test_acc": per_class,
        "final_train_loss": round(final_loss, 6),
    }
    confusion = [{"actual": int(a), "predicted": int(p)} for a, p in zip(y_test.tolist(), pred_test.tolist())]
    return metrics, confusion
