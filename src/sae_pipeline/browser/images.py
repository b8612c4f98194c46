"""The browser's per-latent images: a strip of example digits and an input-gradient heatmap.

Drawn with PIL at native resolution (28 px per digit) and scaled up by the page with ``image-rendering:
pixelated``; captions (digit label, activation) are HTML laid over the tiles, so the PNGs stay small (about
1-3 KB each) and the text stays selectable. 500 latents cost about a second.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

TILE, GAP, COLS = 28, 2, 8  # the page reads these three numbers from the data to place its captions
PITCH = TILE + GAP


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def tile_positions(n_top: int, n_band: int) -> list[tuple[int, int]]:
    """(row, col) of each tile: the top examples fill rows of ``COLS``, the band examples start a new row."""
    pos = [(i // COLS, i % COLS) for i in range(n_top)]
    first = -(-n_top // COLS)
    return pos + [(first + i // COLS, i % COLS) for i in range(n_band)]


def examples_png(pixels: torch.Tensor, indices: list[int], positions: list[tuple[int, int]]) -> bytes:
    """Grayscale strip: digit ``indices[i]`` at ``positions[i]``, mid-grey gaps."""
    rows = max(r for r, _ in positions) + 1
    arr = np.full((rows * PITCH - GAP, COLS * PITCH - GAP), 96, dtype=np.uint8)
    imgs = pixels[indices].numpy()
    for img, (r, c) in zip(imgs, positions):
        arr[r * PITCH:r * PITCH + TILE, c * PITCH:c * PITCH + TILE] = img
    return png(arr)


def diverging(v: np.ndarray) -> np.ndarray:
    """[-1, 1] -> RGB in [0, 1]: blue (-1), white (0), red (+1). The page draws the same scale as a legend."""
    v = np.clip(v, -1, 1)[..., None]
    red, blue, white = np.array([0.70, 0.09, 0.17]), np.array([0.13, 0.40, 0.67]), np.ones(3)
    return np.where(v >= 0, white + v * (red - white), white - v * (blue - white))


def heatmap_png(grad: np.ndarray, mean_img: np.ndarray) -> tuple[bytes, float]:
    """Input gradient (red raises the latent's pre-activation, blue lowers it; scaled to its own max |value|)
    beside the mean of the top examples. Returns the PNG and that max |value| (the legend's range)."""
    lim = max(float(np.abs(grad).max()), 1e-12)
    heat = diverging(grad / lim)
    mean = np.repeat((mean_img / 255.0)[..., None], 3, axis=-1)
    gap = np.full((28, GAP, 3), 0.6)
    arr = (np.concatenate([heat, gap, mean], axis=1) * 255).round().astype(np.uint8)
    return png(arr), lim
