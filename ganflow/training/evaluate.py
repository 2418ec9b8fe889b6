r"""One evaluation of a run: the metrics row of ``metrics.jsonl``.

Every row has ``iteration``, ``flow_time`` and ``seconds``; the model's samples against
held-out data (``energy``, ``w2``; ``modes``, ``hq``, ``mode_kl`` for a mixture target;
Frechet distance and class coverage for images); the method's own metrics
(:meth:`ganflow.training.methods.Method.eval_metrics`); the averages of the step
statistics since the last row; and at iteration 0 of a run started from ``--init``, the
start's distance to that law next to its noise floor.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .._errors import TrainingDivergedError
from ..metrics import energy_distance, mode_metrics, w2

if TYPE_CHECKING:
    from .session import Session

__all__ = ["evaluate", "image_sample_metrics", "sample_metrics"]


@torch.no_grad()
def sample_metrics(s: Session, *, use_generator: bool = False) -> dict:
    """Mode metrics, energy and W2 of the model's samples against held-out data."""
    cfg = s.cfg
    n = cfg.eval_samples if use_generator else s.eval_n
    # Fixed latent (or particle subset) and held-out data every time: curves are not
    # jittered by resampling, and evaluation never touches the training generator.
    fake = s.draw(n, torch.Generator().manual_seed(cfg.seed + 1),
                  use_generator=use_generator).double().cpu()
    held = s.data.sample(n, torch.Generator().manual_seed(cfg.seed + 2))
    if not torch.isfinite(fake).all():
        raise TrainingDivergedError(f"generated samples are NaN/Inf at iteration {s.iteration}")
    out: dict = {}
    if s.data.mixture is not None:
        out.update(mode_metrics(fake, s.data.mixture))
    if s.data.image_shape is not None:
        out.update(image_sample_metrics(s, fake))
    out["energy"] = energy_distance(fake, held.double())
    k = min(cfg.w2_samples, n)
    out["w2"] = w2(fake[:k], held[:k].double())
    return out


def image_sample_metrics(s: Session, fake: torch.Tensor) -> dict:
    """Image metrics of ``fake`` (n, c*h*w): ``frechet_distance`` (and its floor),
    ``class_coverage``, ``class_kl``."""
    # Frechet distance and class coverage in the feature space of ganflow's own
    # classifier (trained once per data set and cached: ganflow.metrics.features)
    from ..metrics.features import image_metrics

    res = image_metrics(fake.float(), s.data, seed=s.cfg.seed)
    # unlabelled images have no class metrics (None): left out of metrics.jsonl
    return {k: res[k] for k in ("frechet_distance", "frechet_distance_floor",
                                "class_coverage", "class_kl") if res[k] is not None}


def _init_metrics(s: Session) -> dict:
    """The start against the ``init`` law: energy distance of the model's samples to
    fresh draws of it, next to the same distance between two draws (the noise floor)."""
    n = s.eval_n
    law = s.init_law()
    fake = s.draw(n, torch.Generator().manual_seed(s.cfg.seed + 1)).double().cpu()
    a, b = (law.sample(n, torch.Generator().manual_seed(s.cfg.seed + k)).double()
            for k in (6, 7))
    out = {"init_energy": energy_distance(fake, a), "init_energy_floor": energy_distance(b, a)}
    if s.init_residual is not None:
        out["init_fit_mse"] = s.init_residual
    return out


@torch.no_grad()
def evaluate(s: Session) -> dict:
    """The metrics row at the session's iteration; empties the step-statistics window."""
    out: dict = {"iteration": s.iteration, "flow_time": s.flow_time,
                 "seconds": round(s.seconds, 3)}
    method = s.method
    if method.samples_are_particles:
        out["n_eval"] = s.eval_n
    out.update(sample_metrics(s))
    if s.iteration == 0 and s.cfg.init:
        out.update(_init_metrics(s))
    out.update(method.eval_metrics())
    if s.recent:
        for key in method.logged:
            mean = sum(getattr(r, key) for r in s.recent) / len(s.recent)
            out[key] = mean if math.isfinite(mean) else None
        out["d_steps"] = sum(r.d_steps for r in s.recent) / len(s.recent)
        out["fit_steps"] = sum(r.fit_steps for r in s.recent) / len(s.recent)
    s.recent = []
    return out
