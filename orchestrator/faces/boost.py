"""Pixel boost, in the manner of FaceFusion's: a face aligned at k times the swapper's crop size is
split by pixel interleaving into k² crops of the model's size, each a slightly shifted low-resolution
view of the face; all are swapped in one request and interleaved back into one crop at the boosted size.

Crop (i, j) of a face holds the boosted crop's pixels (y * k + i, x * k + j); `merge` is the exact
inverse of `split`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from orchestrator.errors import InputError

Swap = Callable[[np.ndarray, np.ndarray], np.ndarray]  # crops [N,S,S,3] and latents [N,D] -> swapped crops


def boost_factor(boost: int | None, size: int) -> int:
    """k, the boosted crop side over the model's crop size `size` (1 without a boost); InputError
    when the boost is not a whole multiple of the size."""
    if boost is None:
        return 1
    if boost < size or boost % size:
        raise InputError(
            f"pixel_boost {boost} is not a multiple of the swapper's crop size {size} "
            f"(choose {size} times 1, 2, 3, ...)"
        )
    return boost // size


def split(crops: np.ndarray, k: int) -> np.ndarray:
    """[B, k*S, k*S, C] -> [B*k², S, S, C]: each face's k² interleaved crops, face by face."""
    count, side, _, channels = crops.shape
    size = side // k
    if size * k != side:
        raise ValueError(f"a crop side of {side} does not split into {k} x {k}")
    grid = crops.reshape(count, size, k, size, k, channels).transpose(0, 2, 4, 1, 3, 5)
    return grid.reshape(count * k * k, size, size, channels)


def merge(crops: np.ndarray, k: int) -> np.ndarray:
    """[B*k², S, S, C] -> [B, k*S, k*S, C]: the inverse of `split`."""
    total, size, _, channels = crops.shape
    count = total // (k * k)
    if count * k * k != total:
        raise ValueError(f"{total} crops are not whole groups of {k * k}")
    grid = crops.reshape(count, k, k, size, size, channels).transpose(0, 3, 1, 4, 2, 5)
    return np.ascontiguousarray(grid.reshape(count, size * k, size * k, channels))


def swap_boosted(swap: Swap, crops: np.ndarray, latents: np.ndarray, k: int) -> np.ndarray:
    """Swap boosted crops [B, k*S, k*S, 3], each to its latent [B, D], with ONE call on all B*k²
    crops (so Triton batches them), and interleave the results back to [B, k*S, k*S, 3]."""
    if k == 1:
        return swap(crops, latents)
    return merge(swap(split(crops, k), np.repeat(latents, k * k, axis=0)), k)
