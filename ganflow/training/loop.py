r"""The training loop: the method's step, the schedules, evaluation at ``eval_every``,
checkpoints, Ctrl-C and NaN handling, and the agreement of torchrun ranks.

The loop knows nothing of any method: it calls :meth:`Method.step` and the collaborators
(:mod:`~ganflow.training.evaluate`, :mod:`~ganflow.training.checkpoint`,
:mod:`~ganflow.training.logging`, :mod:`~ganflow.training.summary`).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import TrainingDivergedError
from .checkpoint import save_checkpoint
from .distributed import STOP_SIGNALS, interrupt_flag
from .evaluate import evaluate
from .logging import Logger, loggers_for
from .session import Session
from .summary import write_summary

__all__ = ["TrainResult", "run_loop"]


@dataclass
class TrainResult:
    """Where a run ended: its folder, status and last evaluation."""

    run_dir: Path
    status: str  # "finished", "interrupted", "stopped" or "diverged"
    iteration: int
    flow_time: float
    seconds: float
    metrics: dict = field(default_factory=dict)


def _postfix(s: Session) -> dict:
    out = {"t": f"{s.flow_time:.3g}"}
    for key in ("modes", "hq", "mode_kl", "frechet_distance", "class_coverage", "w2"):
        if key in s.last_metrics:
            v = s.last_metrics[key]
            out[key] = v if isinstance(v, int) else f"{v:.3g}"
    return out


def _save_all_ranks(s: Session) -> None:
    """Checkpoint on rank 0 with every rank's batch-generator state (a collective:
    every rank calls it at the same iteration); replicated state that parted between
    ranks is reset to rank 0's first, with a warning."""
    if s.ctx.sync_replicas(*s.method.replicated()) and s.ctx.is_main:
        print(f"warning: at iteration {s.iteration} the ranks' copies of the "
              f"{s.cfg.method} state differed (nondeterministic arithmetic?); reset to rank "
              "0's", file=sys.stderr)
    s.rng_states = s.ctx.gather_objects(s.gen.get_state())
    if s.ctx.is_main:
        save_checkpoint(s)


def _evaluate_and_save(s: Session, loggers: list[Logger]) -> None:
    if s.ctx.is_main:
        row = evaluate(s)
        s.last_metrics = row
        for logger in loggers:
            logger.log(s, row)
    else:
        s.recent = []  # rank 0 logs the step statistics (of its own batches)
    _save_all_ranks(s)


def _check_step(s: Session, info) -> None:
    """Stop every rank together if a checked quantity of this step is NaN/Inf."""
    bad = [q for q in s.method.finite if not math.isfinite(getattr(info, q))]
    if s.ctx.any_flag(bool(bad)):  # all ranks raise together, none hangs
        what = (f"{bad[0].replace('_', ' ')} is {getattr(info, bad[0])}"
                if bad else "a loss is NaN/Inf on another rank")
        raise TrainingDivergedError(f"{what} at iteration {s.iteration + 1}")


def run_loop(s: Session, *, progress: bool = True, stop_at: int | None = None) -> TrainResult:
    """Train ``s`` up to ``cfg.iterations`` (or ``stop_at``); returns the outcome.

    Ctrl-C and SIGTERM only set a flag: the loop stops between iterations with a
    checkpoint, so the saved state is never half an update. ``stop_at`` between two
    evaluations saves without a row, so the rows and the step-statistics window are those
    of a run that never stopped. Rank 0 alone evaluates and writes; every rank trains.
    """
    from tqdm.auto import tqdm

    cfg, ctx = s.cfg, s.ctx
    end = cfg.iterations if stop_at is None else min(stop_at, cfg.iterations)
    loggers = loggers_for(s) if ctx.is_main else []
    status = "finished"
    t0 = time.perf_counter() - s.seconds
    # a repeat within 2 s (as torchrun forwards it) is the same Ctrl-C
    with interrupt_flag(signals=STOP_SIGNALS) as interrupted:
        bar = tqdm(total=cfg.iterations, initial=s.iteration,
                   disable=not (progress and ctx.is_main), dynamic_ncols=True,
                   desc=f"{cfg.method} {s.data.name}")
        try:
            # decided on rank 0: the ranks must agree on every collective they enter
            if ctx.broadcast_object(s.iteration == 0
                                    and not (s.run_dir / "metrics.jsonl").exists()):
                _evaluate_and_save(s, loggers)
            while s.iteration < end:
                # every rank, every iteration: a Ctrl-C seen by any rank stops all
                if ctx.any_flag(interrupted.is_set()):
                    status = "interrupted"
                    break
                s.set_schedules()
                info = s.method.step()
                _check_step(s, info)
                s.iteration += 1
                s.flow_time += info.flow_time
                s.recent.append(info)
                s.seconds = time.perf_counter() - t0
                if s.iteration % cfg.eval_every == 0 or s.iteration == cfg.iterations:
                    _evaluate_and_save(s, loggers)
                    bar.set_postfix(_postfix(s), refresh=False)
                elif s.iteration % 50 == 0:
                    bar.set_postfix(_postfix(s), refresh=False)
                bar.update(1)
            if status == "interrupted" or (s.iteration < cfg.iterations
                                           and s.iteration % cfg.eval_every):
                # a checkpoint, no row (as a run that never stopped would have none here)
                s.seconds = time.perf_counter() - t0
                _save_all_ranks(s)
            if status != "interrupted" and s.iteration < cfg.iterations:
                status = "stopped"
            elif status == "finished":
                bar.close()
                status = s.method.finish(interrupted, progress=progress)
        except TrainingDivergedError:
            if ctx.is_main:
                write_summary(s, "diverged")
            raise
        finally:
            bar.close()
            for logger in loggers:
                logger.close()
    if ctx.is_main:
        write_summary(s, status)
    return TrainResult(s.run_dir, status, s.iteration, s.flow_time, s.seconds,
                       dict(s.last_metrics))
