r"""The figures of a run folder: samples over the data, and metric curves.

``samples/samples.png``: the model's samples (generator, or a subsample of the particles)
over the target's density contours (2-D mixture), over the data (2-D samples), as a
histogram against the density (1-D), or for images a grid of 64 generated images above
64 real ones; ``samples/distilled.png`` the same for a particle run's distilled
generator; ``samples/metrics.png``: metrics against flow time. Image runs also leave
``samples/grid-<iteration>.png`` at every evaluation (written by
:class:`ganflow.training.logging.ImageGridLog`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import Dataset

__all__ = ["draw_run_figures", "sample_figure", "save_image_grid"]


def save_image_grid(images: torch.Tensor, image_shape: tuple[int, int, int], path: Path,
                    *, columns: int = 8, scale: int | None = None) -> Path:
    """Write flat images (n, C*H*W) in [-1, 1] as one PNG grid (atomically); each pixel
    becomes ``scale`` x ``scale`` pixels (default: about 32 pixels per image side, so
    that 8 x 8 digits are visible and 28 x 28 MNIST stays 1:1)."""
    import io

    from PIL import Image

    from ._io import write_bytes_atomic

    c, h, w = image_shape
    scale = scale or max(1, 32 // max(h, w))
    x = images.detach().float().reshape(-1, c, h, w).clamp(-1, 1)
    n = x.shape[0]
    rows = -(-n // columns)
    canvas = torch.ones(c, rows * (h + 1) + 1, columns * (w + 1) + 1)  # white 1-px gutters
    for i in range(n):
        r, q = divmod(i, columns)
        canvas[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = x[i]
    pixels = ((canvas + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    arr = pixels[0].numpy() if c == 1 else pixels.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(Path(path), buf.getvalue())
    return Path(path)


def sample_figure(fake: np.ndarray, real: np.ndarray, data: Dataset, title: str):
    """A matplotlib figure of samples ``fake`` (n, d) against ``data`` (``real``: (n, d))."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    if data.dim == 1:
        lo = min(fake.min(), real.min())
        hi = max(fake.max(), real.max())
        ax.hist(fake[:, 0], bins=80, range=(lo, hi), density=True, alpha=0.6, label="generated")
        if data.mixture is not None:
            xs = np.linspace(lo, hi, 800)[:, None]
            ax.plot(xs[:, 0], data.mixture.prob(xs), "k", label="rho_d")
        else:
            ax.hist(real[:, 0], bins=80, range=(lo, hi), density=True, histtype="step",
                    color="k", label="data")
        ax.legend()
    else:
        if data.dim == 2 and data.mixture is not None:
            L = data.mixture.extent(4.0)
            xs = np.linspace(-L, L, 300)
            gx, gy = np.meshgrid(xs, xs)
            lp = data.mixture.log_prob(np.stack([gx, gy], -1))
            ax.contour(gx, gy, lp, levels=np.linspace(lp.max() - 12, lp.max(), 6),
                       colors="k", linewidths=0.5)
        else:  # d > 2: the first two coordinates
            ax.scatter(real[:, 0], real[:, 1], s=2, c="k", alpha=0.3, label="data")
        ax.scatter(fake[:, 0], fake[:, 1], s=2, c="tab:red", alpha=0.5, label="generated")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def draw_run_figures(run) -> list[Path]:
    """Draw ``samples/samples.png``, ``samples/metrics.png`` (and for a distilled
    particle run ``samples/distilled.png``) of a :class:`ganflow.training.Run`; returns
    the paths written."""
    import matplotlib.pyplot as plt

    from .plots import save_figure

    run_dir, data, cfg = run.path, run.data, run.config
    n = run.session.eval_n
    real = data.sample(n, torch.Generator().manual_seed(cfg.seed + 2)).numpy()
    what = f"{cfg.method} on {data.name}: iteration {run.iteration}, t = {run.flow_time:.3g}"
    figures = [("samples.png", False, what)]
    if run.session.method.samples_are_particles and run.has_generator:
        figures.append(("distilled.png", True, f"generator distilled from {what}"))
    written = []
    for name, use_generator, title in figures:
        if data.image_shape is not None:  # generated images above real ones
            fake = run.session.draw(min(n, 64), torch.Generator().manual_seed(cfg.seed + 1),
                                    use_generator=use_generator).cpu()
            gap = torch.ones(8, fake.shape[1])  # a white row between generated and real
            both = torch.cat([fake, gap, torch.from_numpy(real[:len(fake)]).float()])
            written.append(save_image_grid(both, data.image_shape, run_dir / "samples" / name))
            continue
        fake = run.session.draw(n, torch.Generator().manual_seed(cfg.seed + 1),
                                use_generator=use_generator).double().cpu().numpy()
        fig = sample_figure(fake, real, data, title)
        written.append(save_figure(fig, run_dir / "samples" / name))
    rows = run.metrics()
    if rows:
        keys = [k for k in ("hq", "mode_kl", "frechet_distance", "class_coverage", "energy",
                            "w2") if k in rows[0]]
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3))
        t = [r["flow_time"] for r in rows]
        for ax, k in zip(np.atleast_1d(axes), keys, strict=True):
            ax.plot(t, [r[k] for r in rows], "o-", ms=3)
            ax.set_xlabel("flow time")
            ax.set_title(k)
            ax.grid(alpha=0.3)
        written.append(save_figure(fig, run_dir / "samples" / "metrics.png"))
    return written
