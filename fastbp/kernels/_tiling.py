"""How work is split between threads: row tiles for row-wise passes, a grid of output tiles
for matrix products. The split depends only on the shapes and the thread count, so results are
bitwise reproducible at a fixed thread count."""
import numpy as np
from numba import njit

from ._config import INLINED, MIN_TILE_WORK, SERIAL
from ._native import num_threads


@njit(**INLINED)
def n_tiles(n_rows, work_per_row):
    """Row tiles for a row-wise pass: one per thread, but none so small that waking a thread
    costs more than it saves. 1 means: run serially, without entering a parallel region."""
    by_work = (n_rows * work_per_row) // MIN_TILE_WORK
    return max(1, min(num_threads(), n_rows, by_work))


@njit(**INLINED)
def span(tile, n_tiles, n):
    """[start, stop) of tile number `tile` when n items are cut into n_tiles near-equal tiles,
    as int64 whatever the type of tile (a prange index is unsigned)."""
    tile = np.int64(tile)
    return tile * n // n_tiles, (tile + 1) * n // n_tiles


@njit(**SERIAL)
def grid(n_rows, n_cols, depth, n_threads):
    """(row tiles, column tiles) for a matrix product with an (n_rows, n_cols) output and
    depth-long dot products. Uses n_threads tiles (fewer if the product is small) and,
    among the splits into that many, the one that makes BLAS read and pack the least: each
    column tile re-reads the left operand (n_rows x depth) and each row tile the right one
    (depth x n_cols)."""
    n = max(1, min(n_threads, (n_rows * n_cols * depth) // MIN_TILE_WORK))
    best_rows, best_cols = 1, 1
    best_tiles, best_cost = 0, 0
    for rows in range(1, min(n, n_rows) + 1):
        cols = min(n // rows, n_cols)
        cost = cols * n_rows + rows * n_cols
        if rows * cols > best_tiles or (rows * cols == best_tiles and cost < best_cost):
            best_rows, best_cols, best_tiles, best_cost = rows, cols, rows * cols, cost
    return best_rows, best_cols
