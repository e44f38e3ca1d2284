"""How work is split between threads: row tiles for row-wise passes, a grid of output tiles
for matrix products. A row-wise pass computes each row alike whatever its tile. A product's
grid follows its shape and tile_budget(): by default GRID_TILES, so that the threads share out
the same tiles, and the results are bitwise the same, at any thread count. (An input gradient's
grid also follows the BLAS build in use, which changes the bits anyway: input_grad_grid.)"""
import numpy as np
from numba import njit

from ._config import (GRID_TILES, INLINED, MIN_TILE_WORK, SERIAL, UNPACKED_MAX_WORK,
                      UNPACKED_MIN_DEPTH, UNPACKED_ROWS, UNPACKED_TILE_OUTPUTS)
from ._native import num_threads, split_by_threads, unpacked_small_products


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


@njit(**INLINED)
def interleaved(task, n_tasks, n_first):
    """Where task number `task` of n_tasks falls when n_first tasks of one kind and the rest
    of another are interleaved in proportion: (True, its index among the first kind) or (False,
    its index among the rest). A block of consecutive tasks, as prange's static split gives
    each thread, then holds both kinds in about the proportion of the whole."""
    task = np.int64(task)
    first_before = task * n_first // n_tasks
    if (task + 1) * n_first // n_tasks > first_before:
        return True, first_before
    return False, task - first_before


@njit(**INLINED)
def tile_budget():
    """How many tiles a matrix product may be cut into: GRID_TILES at any thread count (the
    default), or the thread count when the work is split by threads
    (fastbp.set_work_split("threads"): fewer, larger BLAS calls, other bits at another count)."""
    return num_threads() if split_by_threads() else GRID_TILES


@njit(**SERIAL)
def grid(n_rows, n_cols, depth, max_tiles):
    """(row tiles, column tiles) for a matrix product with an (n_rows, n_cols) output and
    depth-long dot products. Uses max_tiles tiles (fewer if the product is small) and,
    among the splits into that many, the one that makes BLAS read and pack the least: each
    column tile re-reads the left operand (n_rows x depth) and each row tile the right one
    (depth x n_cols)."""
    n = max(1, min(max_tiles, (n_rows * n_cols * depth) // MIN_TILE_WORK))
    best_rows, best_cols = 1, 1
    best_tiles, best_cost = 0, 0
    for rows in range(1, min(n, n_rows) + 1):
        cols = min(n // rows, n_cols)
        cost = cols * n_rows + rows * n_cols
        if rows * cols > best_tiles or (rows * cols == best_tiles and cost < best_cost):
            best_rows, best_cols, best_tiles, best_cost = rows, cols, rows * cols, cost
    return best_rows, best_cols


@njit(**INLINED)
def input_grad_grid(n_rows, n_in, depth, max_tiles, unpacked_tiles):
    """grid for an input gradient (dpre @ weight^T: an (n_rows, n_in) output from depth-long
    dot products), but where the BLAS multiplies small tiles of one without packing its
    operands (unpacked_small_products()) and unpacked_tiles tiles can all be such tiles: then
    tiles of at most UNPACKED_ROWS rows and UNPACKED_TILE_OUTPUTS outputs, each count the
    smallest power of two that gives them (powers of two keep the cuts on vector boundaries
    for the usual widths). (Two plain loops: searching more grids added more to a cold
    compile than they saved.)"""
    if unpacked_small_products() != 0 and depth >= UNPACKED_MIN_DEPTH:
        rows = 1
        while (n_rows + rows - 1) // rows > UNPACKED_ROWS:
            rows *= 2
        tile_rows = (n_rows + rows - 1) // rows
        cols = 1
        while tile_rows * ((n_in + cols - 1) // cols) > UNPACKED_TILE_OUTPUTS:
            cols *= 2
        tile_outputs = tile_rows * ((n_in + cols - 1) // cols)
        if (rows * cols <= unpacked_tiles and cols <= n_in
                and tile_outputs * depth <= UNPACKED_MAX_WORK):
            return rows, cols
    return grid(n_rows, n_in, depth, max_tiles)
