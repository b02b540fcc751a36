"""A kernel computed as tiles by independent, preemptible processes, then assembled.

The (N, N) kernel of N inputs is cut into tiles of ``block_size`` rows and columns; only the tiles
on and above the diagonal are computed (the kernel is symmetric). Tile k of the list belongs to shard
k mod K, so K processes (``shard`` = 0 … K−1) split the work without talking to each other. Each tile
is written atomically to ``directory/tile_<i>_<j>.npz`` as soon as it is done, so a killed shard
loses at most the tile it was computing, and its rerun computes only the missing tiles. A manifest
(``directory/manifest.json``) records what the tiles are a kernel of; tiles of another kernel are
refused, never mixed. Any process can `assemble` once every tile is there.
"""

from __future__ import annotations

from collections.abc import Callable
import math
import os
from typing import Any
from typing import cast

import keras
import numpy as np

from tf_ntk import ntk
from tf_ntk import rundir

MANIFEST = "manifest.json"


class ShardMismatchError(ValueError):
    """The tile directory holds tiles of another kernel (other inputs, model or settings)."""


def tiles(n: int, block_size: int) -> list[tuple[int, int]]:
    """[(i, j)] tile indices with i ≤ j of an (n, n) kernel cut into ``block_size`` squares."""
    k = math.ceil(n / block_size)
    return [(i, j) for i in range(k) for j in range(i, k)]


def tile_path(directory: str, i: int, j: int) -> str:
    return os.path.join(directory, f"tile_{i}_{j}.npz")


def _check_manifest(directory: str, manifest: dict[str, Any]) -> None:
    path = os.path.join(directory, MANIFEST)
    if rundir.exists(path):
        found = rundir.read_json(path, what="tile manifest")
        if found != manifest:
            changed = sorted(k for k in set(found) | set(manifest) if found.get(k) != manifest.get(k))
            raise ShardMismatchError(f"{directory} holds tiles of another kernel (differs in: "
                                     f"{', '.join(changed)}); delete {directory} (every shard then starts "
                                     "again) or choose another --workdir")
    else:
        rundir.write_json(path, manifest)


def compute_shard(model: keras.Model, x: np.ndarray, directory: str, *, shard: int, num_shards: int,
                  block_size: int, key: str, progress: Callable[[int, int], Any] | None = None,
                  **kernel_kwargs: Any) -> tuple[int, int]:
    """Computes the missing tiles of shard ``shard`` (of ``num_shards``) of the kernel of ``x``.

    Args:
      model: the Keras model.
      x: all N inputs (N, ...), the same in every shard.
      directory: where the tiles go (any file system).
      shard, num_shards: this process's share: tiles k with k mod num_shards = shard.
      block_size: the tile side (rows and columns).
      key: a string naming the kernel (checkpoint, inputs, settings); tiles of another key are refused.
      progress: ``callback(done, total)`` over this shard's tiles.
      **kernel_kwargs: for `tf_ntk.empirical_ntk` (logit, implementation, dtype, strategy, ...);
        with a ``strategy`` of R replicas each tile is computed in sub-blocks of block_size / R
        examples spread over the replicas.

    Returns:
      (computed, total): tiles computed now, and tiles of this shard.
    """
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard={shard} must be in [0, {num_shards})")
    n = len(x)
    _check_manifest(directory, {"n": n, "block_size": int(block_size), "key": key})
    mine = [t for k, t in enumerate(tiles(n, block_size)) if k % num_shards == shard]
    strategy = kernel_kwargs.get("strategy")
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    sub_block = -(-int(block_size) // replicas)  # a tile in sub-blocks that the replicas share
    computed = 0
    for done, (i, j) in enumerate(mine):
        path = tile_path(directory, i, j)
        if not rundir.exists(path):
            rows = x[i * block_size:(i + 1) * block_size]
            cols = None if i == j else x[j * block_size:(j + 1) * block_size]
            block = ntk.empirical_ntk(model, rows, cols, block_size=sub_block, **kernel_kwargs).numpy()
            rundir.write_npz(path, block=block)
            computed += 1
        if progress is not None:
            progress(done + 1, len(mine))
    return computed, len(mine)


def missing(directory: str, n: int, block_size: int) -> list[tuple[int, int]]:
    """The tiles not (yet) in ``directory``."""
    return [t for t in tiles(n, block_size) if not rundir.exists(tile_path(directory, *t))]


def assemble(directory: str, n: int, block_size: int) -> np.ndarray:
    """The (n, n) kernel from its tiles (upper tiles mirrored below the diagonal)."""
    kernel: np.ndarray | None = None
    for i, j in tiles(n, block_size):
        block = rundir.read_npz(tile_path(directory, i, j))["block"]
        if kernel is None:
            kernel = np.zeros((n, n), block.dtype)
        rows = slice(i * block_size, min((i + 1) * block_size, n))
        cols = slice(j * block_size, min((j + 1) * block_size, n))
        kernel[rows, cols] = block
        kernel[cols, rows] = block.T
    return cast(np.ndarray, kernel)  # None only when n is 0
