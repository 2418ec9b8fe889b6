r"""Gaussian kernel density estimates of a point cloud, in chunks so N = 20000+ fits.

    rho_hat(x) = (1/N) sum_j N(x; X_j, b^2 I)

Bandwidth rule (documented default, ``"silverman"``): the normal-reference rule for a
Gaussian kernel in d dimensions,

    b = sigma_hat * (4 / ((d + 2) N))^(1 / (d + 4)),   sigma_hat^2 = mean per-axis variance,

which is optimal for a Gaussian and over-smooths well-separated modes. ``"cv"`` picks b
by likelihood cross-validation instead (:func:`cv_bandwidth`; what the metrics use), and
a float fixes b.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ._errors import GanflowError

__all__ = [
    "cv_bandwidth",
    "silverman_bandwidth",
    "resolve_bandwidth",
    "kde_log_density",
    "kde_log_density_and_score",
]

# Query rows per chunk: a (rows x N) block of logits is the working set; ~1.3 M
# entries keeps it near the cache and memory flat whatever N is.
_BLOCK_ENTRIES = 2**20
# Logits more than this below the row maximum are clamped before exp: they weigh
# < e^-80 ~ 2e-35 relative to the nearest point, and exp of deeply negative numbers
# takes a slow (denormal) underflow path in torch's vectorised exp.
_LOGIT_FLOOR = -80.0


def silverman_bandwidth(points: torch.Tensor) -> float:
    """Normal-reference bandwidth b = sigma (4/((d+2)N))^(1/(d+4)) of a cloud (N, d)."""
    n, d = points.shape
    if n < 2:
        raise GanflowError(f"a kernel density estimate needs at least 2 points, got {n}")
    sigma = math.sqrt(float(points.double().var(0).mean()))
    if not sigma > 0:
        raise GanflowError("all points coincide: the kernel bandwidth would be zero")
    return sigma * (4.0 / ((d + 2) * n)) ** (1.0 / (d + 4))


def cv_bandwidth(
    points: torch.Tensor, *, n_candidates: int = 24, max_points: int = 2000, seed: int = 0
) -> float:
    r"""Bandwidth by likelihood cross-validation: half the points fit, the other half score.

    Candidates are log-spaced from Silverman's b / 100 to 1.5 b. At most ``max_points``
    (a seeded subsample) take part, so the cost is bounded; the winner b_fit, chosen for
    n_fit fitting points, is rescaled to all N points by the rate (n_fit/N)^(1/(d+4)).
    Unlike Silverman's rule it adapts to narrow, well-separated modes (ring8's std 0.02
    vs Silverman's ~0.4).
    """
    n, d = points.shape
    if n < 4:
        raise GanflowError(f"cross-validated bandwidth needs at least 4 points, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_points]
    half = len(perm) // 2
    fit, score = points[perm[:half]], points[perm[half:]]
    b0 = silverman_bandwidth(points)
    candidates = torch.logspace(math.log10(b0 / 100), math.log10(1.5 * b0), n_candidates)
    logliks = [float(kde_log_density(score, fit, float(b)).mean()) for b in candidates]
    best = float(candidates[int(np.argmax(logliks))])
    return best * (half / n) ** (1.0 / (d + 4))


def resolve_bandwidth(points: torch.Tensor, bandwidth: float | str) -> float:
    """The bandwidth rule (``"silverman"``, ``"cv"``) applied to ``points``, or the float given."""
    if bandwidth == "silverman":
        return silverman_bandwidth(points)
    if bandwidth == "cv":
        return cv_bandwidth(points)
    try:
        b = float(bandwidth)
    except (TypeError, ValueError):
        raise GanflowError(
            f"bandwidth must be 'silverman', 'cv' or a positive number, got {bandwidth!r}"
        ) from None
    if not (math.isfinite(b) and b > 0):
        raise GanflowError(
            f"bandwidth must be 'silverman', 'cv' or a positive number, got {bandwidth!r}"
        )
    return b


def _kernel_blocks(query: torch.Tensor, points: torch.Tensor, bandwidth: float):
    """Yield (q, w, w_sum, lse) per chunk: w = exp(logit - rowmax), unnormalised kernel
    weights, w_sum their row sums (M, 1), and lse = ln sum_j exp(-|q - X_j|^2 / (2 b^2)).
    ``w`` lives in a buffer that the next chunk overwrites."""
    b2 = bandwidth**2
    # -|q - p|^2/(2b^2) = (q.p)/b^2 - |p|^2/(2b^2) - |q|^2/(2b^2): one addmm per block,
    # the |q|^2 term is constant along the row and is added back to lse only. Both sets
    # are first centred on the points' mean: the expansion cancels ~|x|^2/b^2 digits.
    # The yielded q is the caller's (uncentred) block.
    centre = points.mean(0)
    points_c = points - centre
    p_term = points_c.pow(2).sum(1).mul_(-0.5 / b2)[None, :]
    rows = max(1, _BLOCK_ENTRIES // max(1, points.shape[0]))
    # One block buffer, reused: a fresh multi-MB block per chunk, interleaved with the
    # small per-chunk results, fragments the C heap (the resident memory then grows by
    # about one block per chunk). The caller must be done with w before the next chunk.
    buf = torch.empty(min(rows, len(query)), points.shape[0], dtype=points.dtype,
                      device=points.device)
    for q in torch.split(query, rows):
        q_c = q - centre
        logits = torch.addmm(p_term, q_c, points_c.T, alpha=1.0 / b2, out=buf[: len(q)])
        row_max = logits.amax(1, keepdim=True)
        w = logits.sub_(row_max).clamp_min_(_LOGIT_FLOOR).exp_()
        w_sum = w.sum(1, keepdim=True)
        lse = w_sum[:, 0].log() + row_max[:, 0] - q_c.pow(2).sum(1).mul_(0.5 / b2)
        yield q, w, w_sum, lse


def _log_norm(n: int, d: int, bandwidth: float) -> float:
    return -math.log(n) - 0.5 * d * math.log(2 * math.pi * bandwidth**2)


def kde_log_density_and_score(
    query: torch.Tensor, points: torch.Tensor, bandwidth: float
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""ln rho_hat and grad ln rho_hat at ``query`` (M, d) for the cloud ``points`` (N, d).

    grad ln rho_hat(x) = sum_j w_j(x) (X_j - x) / b^2 with w = softmax_j(-|x - X_j|^2/(2b^2)).
    Returns tensors of shapes (M,) and (M, d), in ``query``'s dtype and device.
    """
    n, d = points.shape
    logs, scores = [], []
    for q, w, w_sum, lse in _kernel_blocks(query, points, bandwidth):
        scores.append((w @ points / w_sum - q) / bandwidth**2)
        logs.append(lse)
    return torch.cat(logs) + _log_norm(n, d, bandwidth), torch.cat(scores)


def kde_log_density(query: torch.Tensor, points: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """ln rho_hat at ``query`` (M, d); see :func:`kde_log_density_and_score`."""
    n, d = points.shape
    logs = [lse for *_, lse in _kernel_blocks(query, points, bandwidth)]
    return torch.cat(logs) + _log_norm(n, d, bandwidth)


# ---------------------------------------------------------------------------------------
# Binned evaluation: linear binning, FFT convolution, linear interpolation
# ---------------------------------------------------------------------------------------

# Grid spacing h = bandwidth / _CELLS_PER_BANDWIDTH. The relative error of the binned sums
# is O(h^2 / b^2) (see kde_log_density_and_score_binned); 6 cells per bandwidth keeps it
# at the 1e-3 level for the drift.
_CELLS_PER_BANDWIDTH = 6
# Kernel support, in bandwidths: exp(-8^2 / 2) ~ 1.3e-14 of the kernel's peak is dropped.
_CUTOFF = 8.0
# Most grid cells a binned evaluation may use (a float64 grid of 2^22 cells is 32 MB;
# with the FFT work arrays about 0.4 GB in 2-D).
_MAX_GRID_CELLS = 2**22
# Trimmed box of the bulk (used only when the full box would exceed the cell cap): the
# per-axis quantiles (_BULK_Q, 1 - _BULK_Q), widened by their spread on each side.
_BULK_Q = 0.01


def resolve_kde(dim: int, kde: str) -> str:
    r"""Resolve the KDE evaluation ``kde`` ("auto", "binned", "direct") for dimension ``dim``.

    ``"auto"`` is ``"binned"`` for d <= 2 and ``"direct"`` above; ``"binned"`` in d > 2 is
    an error (a grid of (range / h)^d cells does not pay off there).
    """
    if kde not in ("auto", "binned", "direct"):
        raise GanflowError(f"kde must be 'auto', 'binned' or 'direct', got {kde!r}")
    if kde == "auto":
        return "binned" if dim <= 2 else "direct"
    if kde == "binned" and dim > 2:
        raise GanflowError(
            f"kde='binned' works in 1 or 2 dimensions, got {dim}; use kde='direct'"
        )
    return kde


def _direct_sums(query: torch.Tensor, points: torch.Tensor, bandwidth: float):
    """S(q) = sum_j exp(-|q - X_j|^2 / (2 b^2)) and G(q) = sum_j exp(...) (X_j - q) / b^2,
    summed directly over explicit differences q - X_j (no |q|^2 + |X|^2 - 2 q.X expansion,
    which loses everything for points far from the origin relative to b). For the few
    pairs that involve points off the binning grid. Returns (S (M,), G (M, d))."""
    if len(query) == 0 or len(points) == 0:
        return query.new_zeros(len(query)), torch.zeros_like(query)
    rows = max(1, _BLOCK_ENTRIES // max(1, points.shape[0] * points.shape[1]))
    s_parts, g_parts = [], []
    for q in torch.split(query, rows):
        diff = points[None, :, :] - q[:, None, :]  # (rows, N, d)
        w = diff.pow(2).sum(-1).mul_(-0.5 / bandwidth**2).exp_()
        s_parts.append(w.sum(1))
        g_parts.append(torch.einsum("mn,mnd->md", w, diff) / bandwidth**2)
    return torch.cat(s_parts), torch.cat(g_parts)


def _grid_box(points: torch.Tensor, h: float, max_cells: int):
    """Lower corner, cells per axis and spacing of the binning grid for ``points`` (float64).

    The grid covers all points when that takes at most ``max_cells`` cells at spacing h.
    Otherwise it covers the bulk (per-axis quantiles 1 % and 99 %, widened by their spread
    on each side, clipped to the points' range); if even that exceeds the cap, h grows.
    """
    d = points.shape[1]
    lo, hi = points.amin(0), points.amax(0)

    def n_cells(lo_, hi_, h_):
        return [int(math.floor(float(w) / h_)) + 2 for w in (hi_ - lo_)]

    sizes = n_cells(lo, hi, h)
    if math.prod(sizes) > max_cells:
        k_lo = max(1, int(math.ceil(_BULK_Q * len(points))))
        k_hi = max(1, len(points) - k_lo + 1)
        q_lo = points.kthvalue(k_lo, 0).values
        q_hi = points.kthvalue(k_hi, 0).values
        spread = q_hi - q_lo
        lo = torch.maximum(lo, q_lo - spread)
        hi = torch.minimum(hi, q_hi + spread)
        sizes = n_cells(lo, hi, h)
        if math.prod(sizes) > max_cells:
            h_wanted = h
            h = max(float(w) for w in (hi - lo)) / (max_cells ** (1.0 / d) - 2)
            sizes = n_cells(lo, hi, h)
            warnings.warn(
                f"binned KDE: the bulk of the points needs more than {max_cells} grid "
                f"cells at spacing {h_wanted:.3g}; using {h:.3g} instead (the error grows "
                "as h^2/b^2; kde='direct' is exact)", RuntimeWarning, stacklevel=3)
    return lo, sizes, h


def _corner_weights(pos: torch.Tensor, lo: torch.Tensor, h: float, sizes: list[int]):
    """Flat cell indices and linear-interpolation weights of the 2^d grid nodes around
    each row of ``pos`` (inside the grid box): a list of 2^d pairs (index (M,), weight (M,))."""
    u = (pos - lo).div_(h)
    i0 = u.floor().clamp_(min=0)
    i0 = torch.minimum(i0, torch.tensor([s - 2.0 for s in sizes], dtype=u.dtype, device=u.device))
    frac = u.sub_(i0).clamp_(0.0, 1.0)
    i0 = i0.long()
    if len(sizes) == 1:
        base, a = i0[:, 0], frac[:, 0]
        return [(base, 1.0 - a), (base + 1, a)]
    stride = sizes[1]
    base = i0[:, 0] * stride + i0[:, 1]
    a, c = frac[:, 0], frac[:, 1]
    a0, c0 = 1.0 - a, 1.0 - c
    return [(base, a0 * c0), (base + 1, a0 * c), (base + stride, a * c0),
            (base + stride + 1, a * c)]


def _fft_fields(counts: torch.Tensor, h: float, bandwidth: float, cutoff: float):
    """Convolve the binned counts (grid shape) with K(r) = exp(-|r|^2/(2b^2)) and with
    grad K(r) = -r/b^2 K(r) (one field per axis) on offsets |r_k| <= cutoff b, by
    zero-padded FFT. Returns a (1 + d, cells) tensor: the K-sum on the grid, then the
    grad-K sums. The kernels are products over axes, so their spectra are outer products
    of 1-D spectra (no d-dimensional FFT of a kernel is taken).

    The kernel used has variance b^2 - h^2/3 per axis, rescaled to the same total mass:
    linear binning and linear interpolation each smooth by h^2/6 on average, so the
    binned sum estimates the kernel of variance b^2 to O(h^2) with a smaller constant."""
    shape = counts.shape
    d = len(shape)
    m = int(math.ceil(cutoff * bandwidth / h))
    # circular convolution of length L is the linear one on the grid when L >= n + m
    fft_shape = [n + m for n in shape]
    axes = tuple(range(d))
    spec_counts = torch.fft.rfftn(counts, s=fft_shape, dim=axes)
    var = bandwidth**2 - min(h**2 / 3.0, bandwidth**2 / 2)  # capped for coarse grids
    offsets = torch.arange(-m, m + 1, dtype=counts.dtype, device=counts.device) * h
    k1 = torch.exp(-0.5 * offsets**2 / var) * math.sqrt(bandwidth**2 / var)
    dk1 = -offsets / var * k1
    base_spec, grad_spec = [], []
    for ax, length in enumerate(fft_shape):
        fft = torch.fft.rfft if ax == d - 1 else torch.fft.fft
        idx = torch.arange(-m, m + 1, device=counts.device) % length  # offset k at k mod L
        spec = []
        for ker in (k1, dk1):
            wrapped = torch.zeros(length, dtype=counts.dtype, device=counts.device)
            wrapped.index_add_(0, idx, ker)  # index_add: m >= L would alias, not drop
            spec.append(fft(wrapped))
        base_spec.append(spec[0])
        grad_spec.append(spec[1])

    def outer(specs):
        if d == 1:
            return specs[0]
        return specs[0][:, None] * specs[1][None, :]

    kernels = [outer(base_spec)]
    for ax in range(d):
        kernels.append(outer([grad_spec[k] if k == ax else base_spec[k] for k in range(d)]))
    crop = tuple(slice(0, n) for n in shape)
    fields = [torch.fft.irfftn(spec_counts * ker, s=fft_shape, dim=axes)[crop].reshape(-1)
              for ker in kernels]
    return torch.stack(fields)


def kde_log_density_and_score_binned(
    query: torch.Tensor,
    points: torch.Tensor,
    bandwidth: float,
    *,
    cells_per_bandwidth: float = _CELLS_PER_BANDWIDTH,
    cutoff: float = _CUTOFF,
    max_cells: int = _MAX_GRID_CELLS,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""ln rho_hat and grad ln rho_hat at ``query`` (M, d), d = 1 or 2, in O(N + M + G log G).

    Same quantities as :func:`kde_log_density_and_score` (the KDE drift term of ODE (2),
    docs/theory.md section 7), evaluated on a grid of G cells instead of over all pairs:

    1. linear binning: each point X_j puts weights (1 - a_k) and a_k, per axis, on the
       2^d grid nodes around it (a_k its fractional position in the cell); this keeps
       mass and mean exactly;
    2. the binned counts are convolved with K(r) = exp(-|r|^2/(2b^2)) and with
       grad K(r) = -r/b^2 K(r), truncated at |r_k| <= ``cutoff`` b (default 8: the
       dropped tail is below exp(-32) ~ 1e-14 of the peak), by zero-padded FFT
       (``torch.fft``: CPU or CUDA; in float64 whatever the input dtype, so that FFT
       round-off, ~1e-16 of the largest grid value, stays far below the smallest
       density a point can see, its own kernel, 1/N of the largest);
    3. both fields are interpolated linearly back to the queries, and
       grad ln rho_hat = (grad-K sum) / (K sum).

    Error bound. Grid spacing h = b / ``cells_per_bandwidth`` (default b/6). Linear
    binning and linear interpolation each replace a kernel value K(x - X_j) by an average
    over a two-node stencil with the same mean and a variance a(1 - a) h^2 <= h^2/4 per
    axis, so each pair is off by at most (h^2/8) max|d^2 K/dr^2| per axis and operation:
    O(h^2/b^2) relative, at most ~1/300 of the kernel's peak per pair at h = b/6. On
    average over positions (a uniform) each operation adds h^2/6 of variance, so the
    kernel put on the grid has variance b^2 - h^2/3 (same mass): that removes the mean
    part of the error, and what is left fluctuates with the points' positions in their
    cells and largely cancels over many points: at Silverman's b the score and the
    drift stay within ~1e-3 of their norm and ln rho_hat within ~1e-2 everywhere (edges,
    sparse points, outliers included), falling as h^2 (tests/test_kde_binned.py holds
    the bounds against direct summation). At a query r bandwidths from every point
    (deep in the kernels' tails) the relative error grows like (r h / b^2)^2 / 8: a few
    % at r = 5, on a density e^{-12} below the kernel's peak. A point's own kernel
    contributes no gradient at it (the binning and interpolation stencils are the same
    and symmetric), as in direct summation.

    Grid extent and far points. The grid covers all points when that takes at most
    ``max_cells`` cells (2^22 by default). Otherwise it covers the bulk (per-axis 1 %
    and 99 % quantiles widened by their spread on each side) and every kernel pair that
    involves a point outside the grid box is summed directly: the queries outside the
    box against the points within ``cutoff`` b of the box's boundary or outside it, and
    the queries within ``cutoff`` b of the boundary against the points outside. So a far
    outlier costs O(N_edge) kernel sums, not a grid reaching it. If even the bulk box
    needs more cells, h grows to fit the cap (the O(h^2/b^2) bound then degrades).

    Queries farther than ~``cutoff`` b from every point (where the kernel sum falls
    below the FFT's round-off, 1e3 eps N) get rho_hat = 0 (ln = -inf) and score 0; a
    query that is one of the points never does (its own kernel sum is ~1).
    """
    n, d = points.shape
    if d not in (1, 2):
        raise GanflowError(f"the binned KDE works in 1 or 2 dimensions, got {d}")
    if query.ndim != 2 or query.shape[1] != d:
        raise GanflowError(f"query must have shape (M, {d}), got {tuple(query.shape)}")
    out_dtype = query.dtype
    same = query is points
    pts = points.to(torch.float64)
    qry = pts if same else query.to(torch.float64)
    b = float(bandwidth)
    lo, sizes, h = _grid_box(pts, b / cells_per_bandwidth, max_cells)
    hi = lo + torch.tensor([(s - 1) * h for s in sizes], dtype=torch.float64, device=pts.device)
    reach = cutoff * b

    def inside(x, margin=0.0):
        return ((x >= lo + margin) & (x <= hi - margin)).all(1)

    p_in = inside(pts)
    counts = torch.zeros(math.prod(sizes), dtype=torch.float64, device=pts.device)
    grid_pts = pts if bool(p_in.all()) else pts[p_in]
    corners = _corner_weights(grid_pts, lo, h, sizes)
    for idx, wt in corners:
        counts.index_add_(0, idx, wt)
    fields = _fft_fields(counts.reshape(sizes), h, b, cutoff)

    q_in = inside(qry)
    s_val = torch.zeros(len(qry), dtype=torch.float64, device=qry.device)
    g_val = torch.zeros(len(qry), d, dtype=torch.float64, device=qry.device)
    q_grid = qry if bool(q_in.all()) else qry[q_in]
    rows = fields.T.contiguous()  # (cells, 1 + d): one gather per node
    acc = torch.zeros(len(q_grid), 1 + d, dtype=torch.float64, device=qry.device)
    q_corners = corners if same and q_grid is grid_pts else _corner_weights(q_grid, lo, h, sizes)
    for idx, wt in q_corners:
        acc.addcmul_(rows[idx], wt[:, None])
    if bool(q_in.all()):
        s_val, g_val = acc[:, 0], acc[:, 1:]
    else:
        s_val[q_in], g_val[q_in] = acc[:, 0], acc[:, 1:]
    if not bool(p_in.all()) or not bool(q_in.all()):
        # pairs with a point or a query outside the grid box, summed directly
        p_out = ~p_in
        p_edge = ~inside(pts, reach)  # within reach of the boundary, or outside
        q_out = ~q_in
        q_edge = q_in & ~inside(qry, reach)
        if bool(q_out.any()):
            s, g = _direct_sums(qry[q_out], pts[p_edge], b)
            s_val[q_out], g_val[q_out] = s, g
        if bool(q_edge.any()) and bool(p_out.any()):
            s, g = _direct_sums(qry[q_edge], pts[p_out], b)
            s_val[q_edge] += s
            g_val[q_edge] += g
    # FFT round-off is ~eps log2(G) of the largest grid value (<= the number of points);
    # sums below a generous multiple of that are noise: rho_hat = 0 there, score 0
    noise = 1e3 * torch.finfo(torch.float64).eps * len(grid_pts)
    empty = s_val <= noise
    if bool(empty.any()):
        s_val = s_val.masked_fill(empty, 0.0)
        g_val = g_val.masked_fill(empty[:, None], 0.0)
    log_s = s_val.log()
    score = g_val / s_val.masked_fill(empty, 1.0)[:, None]
    return (log_s + _log_norm(n, d, b)).to(out_dtype), score.to(out_dtype)
