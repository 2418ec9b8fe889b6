r"""Interleaved training runs: DESIGN.md's time-to-quality protocol.

The machines are shared and noisy, so wall times compare only between runs measured
side by side. :func:`run_interleaved` advances every configuration by ``chunk``
iterations in turn (round robin, in one process) until all have finished, through the
public ``train(stop_at=...)`` / ``resume(stop_at=...)`` API; each run's own clock (the
``seconds`` of its metrics rows) counts only its own iterations and evaluations, so a
slow neighbour or a checkpoint reload is never charged to it.

:func:`quality_row` reads a run's final metrics and its time to quality;
:func:`plot_samples_at_times` draws every run's samples at fixed wall times (or
iterations) from the snapshots the trainer keeps at each evaluation.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from ganflow.data import load_data
from ganflow.metrics import first_at_quality_bar
from ganflow.training import TrainConfig, load_run, read_metrics, resume, train


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", name)


def run_interleaved(configs: dict[str, TrainConfig], root: Path, chunk: int,
                    log=print) -> dict[str, dict]:
    """Train every configuration, ``chunk`` iterations at a time, round robin.

    Returns name -> {"dir": run folder, "status": finished|diverged|error: ...}."""
    runs = {name: {"dir": Path(root) / _slug(name), "status": None, "it": 0}
            for name in configs}
    pending = list(configs)
    while pending:
        for name in list(pending):
            run, cfg = runs[name], configs[name]
            stop = run["it"] + chunk
            try:
                if run["it"] == 0:
                    res = train(cfg, out=run["dir"], progress=False, stop_at=stop)
                else:
                    res = resume(run["dir"], progress=False, stop_at=stop)
                run["it"], run["status"] = res.iteration, res.status
            except Exception as exc:  # a diverged run is a result, not a crash
                run["status"] = f"error: {type(exc).__name__}: {exc}"
            if run["status"] == "interrupted":
                # Ctrl-C / SIGTERM reached the trainer: stop the whole sweep, not just
                # the run it happened to interrupt (each run's checkpoint stands)
                log(f"  {name}: interrupted at iteration {run['it']}; stopping the sweep")
                raise KeyboardInterrupt
            if run["status"] != "stopped":
                pending.remove(name)
                log(f"  {name}: {run['status']} at iteration {run['it']}")
    return runs


def quality_row(run_dir: Path, data: str) -> dict:
    """Final metrics of a run and the first evaluation meeting the bar (or None)."""
    rows = read_metrics(run_dir)
    last = rows[-1] if rows else {}
    mixture = load_data(data).mixture
    hit = None
    if mixture is not None:
        k = mixture.n_components
        hit = first_at_quality_bar(rows, k)
    keys = ("iteration", "flow_time", "seconds", "modes", "hq", "mode_kl", "energy", "w2")
    return {**{k: last.get(k) for k in keys},
            "time_to_quality_s": hit["seconds"] if hit else None,
            "iterations_to_quality": hit["iteration"] if hit else None}


QUALITY_HEADER = (f"{'data':>7} {'seed':>4} {'method':>22} {'modes':>5} {'HQ%':>6} "
                  f"{'modeKL':>7} {'energy':>8} {'W2':>6} {'ttq_s':>8} {'wall_s':>7}")


def format_quality_row(r: dict) -> str:
    """One line of a quality table (a :func:`quality_row` plus data, seed, method,
    status), aligned under :data:`QUALITY_HEADER`."""
    def f(v, spec):
        return "-" if v is None else format(v, spec)

    return (f"{r['data']:>7} {r['seed']:>4} {r['method']:>22} {f(r['modes'], 'd'):>5} "
            f"{f(r['hq'] and 100 * r['hq'], '.1f'):>6} {f(r['mode_kl'], '.3f'):>7} "
            f"{f(r['energy'], '.4f'):>8} {f(r['w2'], '.3f'):>6} "
            f"{f(r['time_to_quality_s'], '.1f'):>8} {f(r['seconds'], '.1f'):>7}  {r['status']}")


def _samples_at(run_dir: Path, iteration: int, n: int) -> np.ndarray:
    snap = run_dir / "snapshots"
    p = snap / f"P-{iteration:08d}.safetensors"
    if p.exists():
        return load_file(str(p))["particles"][:n].double().numpy()
    # a generator's (or a flow-chain's) snapshot, through the run: the latents of seed 0
    return load_run(run_dir, device="cpu").sample(n, seed=0, snapshot=iteration).double().numpy()


def plot_samples_at_times(runs: dict[str, Path], data: str, times: list[float], path: Path,
                          n: int = 2000, *, by: str = "seconds") -> Path:
    """Rows: runs; columns: the last evaluation at or before each mark.

    ``by="seconds"``: the marks are wall times (time to quality); ``by="iteration"``:
    iterations (the same sample sets of every run side by side, e.g. a divergence)."""
    unit = {"seconds": "s", "iteration": "it"}[by]
    import matplotlib.pyplot as plt

    from ganflow.plots import save_figure

    mixture = load_data(data).mixture
    fig, axes = plt.subplots(len(runs), len(times), figsize=(2.3 * len(times), 2.3 * len(runs)),
                             squeeze=False)
    # a margin around the target's extent, so that points on its outer modes show
    lim = 1.15 * mixture.extent(4.0) if mixture is not None else 3.0
    for i, (name, run_dir) in enumerate(runs.items()):
        rows = read_metrics(run_dir)
        for j, t in enumerate(times):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            done = [r for r in rows if r[by] <= t]
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
            if i == 0:
                ax.set_title(f"{t:g} {unit}", fontsize=8)
            if not done:
                continue
            r = done[-1]
            x = _samples_at(run_dir, r["iteration"], n)
            if mixture is not None and mixture.dim == 2:
                c = mixture.means.numpy()
                ax.scatter(c[:, 0], c[:, 1], s=12, c="k", marker="+", linewidths=0.6)
            if x.shape[1] == 1:
                ax.hist(x[:, 0], bins=60, range=(-lim, lim), density=True)
            else:
                ax.scatter(x[:, 0], x[:, 1], s=0.3, c="tab:red", alpha=0.5, linewidths=0)
                ax.set_xlim(-lim, lim)
                ax.set_ylim(-lim, lim)
            ax.text(0.02, 0.02, f"it {r['iteration']}", transform=ax.transAxes, fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)
