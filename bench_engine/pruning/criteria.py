"""Mask criteria: which weights of a layer become zero, and (for SparseGPT) how the rest change.

Each criterion takes a layer's weights as a (G, R, K) matrix (see `layers.weight_matrix`) and
either a number of weights to prune or an N:M pattern, and returns the new matrix and the mask
(True = pruned). Exactly the requested number of weights is pruned: ties in the score are broken
by position, never by a threshold that could prune more than asked.
"""

from __future__ import annotations

import torch

from bench_engine.pruning.stats import LayerStats


def split_count(total: int, sizes: list[int] | torch.Tensor) -> torch.Tensor:
    """Split `total` over cells of the given sizes, proportionally, with exact integer sum.

    Uses cumulative rounding, so every cell gets floor or ceil of its share and the counts add
    up to `total`.
    """
    sizes_t = torch.as_tensor(sizes, dtype=torch.float64)
    cumulative = torch.cumsum(sizes_t, 0)
    grand = float(cumulative[-1])
    bounds = torch.round(cumulative * (total / grand)).to(torch.int64)
    counts = torch.diff(bounds, prepend=torch.zeros(1, dtype=torch.int64))
    return counts


def select_lowest(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Return a mask with exactly counts[i] True entries in row i, at the lowest scores.

    `scores` is (B, n) and `counts` is (B,). A stable sort breaks ties by position.
    """
    order = torch.argsort(scores, dim=1, stable=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return ranks < counts.unsqueeze(1)


def n_m_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune the M-N lowest scores in each group of M consecutive entries along the last dim."""
    *lead, k = scores.shape
    groups = scores.reshape(-1, m)
    counts = torch.full((groups.shape[0],), m - n, dtype=torch.int64)
    return select_lowest(groups, counts).reshape(*lead, k)


def magnitude(
    weights: torch.Tensor, prune_count: int, pattern: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune the weights of smallest |w| across the whole layer (or per N:M group)."""
    scores = weights.abs()
    if pattern is not None:
        mask = n_m_mask(scores, *pattern)
    else:
        mask = select_lowest(scores.reshape(1, -1), torch.tensor([prune_count])).reshape(weights.shape)
    return weights.masked_fill(mask, 0.0), mask


def wanda(
    weights: torch.Tensor,
    stats: LayerStats,
    prune_count: int,
    pattern: tuple[int, int] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wanda (Sun et al., ICLR 2024): score |w| × ‖x‖₂, compared within each output row.

    For grouped convolutions the input norms of each group score that group's rows only.
    """
    groups, rows, k = weights.shape
    scores = weights.abs() * stats.input_norms.to(weights.dtype).unsqueeze(1)  # (G, R, K)
    if pattern is not None:
        mask = n_m_mask(scores, *pattern)
    else:
        counts = split_count(prune_count, [k] * (groups * rows))
        mask = select_lowest(scores.reshape(groups * rows, k), counts).reshape(weights.shape)
    return weights.masked_fill(mask, 0.0), mask


def _damped_inverse_cholesky(hessian: torch.Tensor, damping: float) -> torch.Tensor:
    """Return the upper Cholesky factor of (H + λI)⁻¹ for each group, λ = damping × mean diag.

    Inputs that were always zero in calibration (diagonal 0) get diagonal 1, so H stays
    invertible. Their weights are then pruned or kept like any other.
    """
    h = hessian.clone().double()
    diag = h.diagonal(dim1=1, dim2=2)
    dead = diag == 0
    diag[dead] = 1.0
    mean_diag = diag.mean(dim=1, keepdim=True)
    for attempt in range(5):
        lam = damping * (10**attempt) * mean_diag
        damped = h + torch.diag_embed(lam.expand_as(diag))
        factor, info = torch.linalg.cholesky_ex(damped)
        if not bool(info.any()):
            inverse = torch.cholesky_inverse(factor)
            upper = torch.linalg.cholesky(inverse, upper=True)
            return upper.float()
    raise ValueError("Hessian is not positive definite even with 10,000× damping")


def sparsegpt(
    weights: torch.Tensor,
    stats: LayerStats,
    prune_count: int,
    pattern: tuple[int, int] | None,
    blocksize: int = 128,
    damping: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh, ICML 2023): blocked OBS pruning with weight updates.

    Columns are processed in blocks. Within a block, the mask is chosen by w² / [H⁻¹]_cc² (the
    OBS saliency), and each pruned column's error is spread over the not-yet-processed columns
    through the Cholesky factor of the inverse Hessian. All groups of a grouped convolution run
    together as a batch, each with its own Hessian.
    """
    if stats.hessian is None:
        raise ValueError("SparseGPT needs Hessian statistics; collect them with need_hessian=True")
    groups, rows, k = weights.shape
    w = weights.clone()
    hinv = stats.inverse_factors.get(damping)
    if hinv is None:
        hinv = _damped_inverse_cholesky(stats.hessian, damping)  # (G, K, K) upper
        stats.inverse_factors[damping] = hinv
    mask = torch.zeros_like(w, dtype=torch.bool)

    if pattern is not None:
        n, m = pattern
        blocksize = max(m, blocksize - blocksize % m)
    block_starts = list(range(0, k, blocksize))
    if pattern is None:
        # Per (group, block) prune counts that add up exactly to the layer's count.
        cell_sizes = [rows * (min(s + blocksize, k) - s) for _ in range(groups) for s in block_starts]
        block_counts = split_count(prune_count, cell_sizes).reshape(groups, len(block_starts))

    for block_index, i1 in enumerate(block_starts):
        i2 = min(i1 + blocksize, k)
        width = i2 - i1
        w1 = w[:, :, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[:, i1:i2, i1:i2]
        d = hinv1.diagonal(dim1=1, dim2=2)  # (G, width)

        if pattern is None:
            saliency = w1.square() / d.unsqueeze(1).square()
            mask1 = select_lowest(saliency.reshape(groups, rows * width), block_counts[:, block_index])
            mask1 = mask1.reshape(groups, rows, width)
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)

        for i in range(width):
            if pattern is not None and i % pattern[1] == 0:
                n, m = pattern
                saliency = w1[:, :, i : i + m].square() / d[:, i : i + m].unsqueeze(1).square()
                mask1[:, :, i : i + m] = n_m_mask(saliency, n, m)
            column = w1[:, :, i]
            quantised = column.masked_fill(mask1[:, :, i], 0.0)
            q1[:, :, i] = quantised
            err = (column - quantised) / hinv1[:, i, i].unsqueeze(1)  # (G, R)
            w1[:, :, i:] -= err.unsqueeze(2) * hinv1[:, i, i:].unsqueeze(1)
            err1[:, :, i] = err

        w[:, :, i1:i2] = q1
        mask[:, :, i1:i2] = mask1
        if i2 < k:
            w[:, :, i2:] -= torch.bmm(err1, hinv[:, i1:i2, i2:])

    w = w.masked_fill(mask, 0.0)
    return w, mask
