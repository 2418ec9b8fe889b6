"""Commands that read results: ``ganflow eval`` (every metric of a run or a sample file)
and ``ganflow track`` (does a run follow the flow?)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from .._errors import GanflowError
from ._common import BoxOpt, JsonOpt, check_outputs, exit_on_error, fmt, write_json


def eval_(
    source: Annotated[
        Path,
        typer.Argument(
            help="a run folder (samples drawn from its generator) or a .npy file of samples (n, d)"
        ),
    ],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="reference distribution (named, normal:..., .json, .npy/.csv); "
            "default: the run's own data",
        ),
    ] = None,
    n: Annotated[
        int | None, typer.Option("--n", help="samples to evaluate (a .npy: its first n; "
                                 "default 2500, 10000 for images: class coverage).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the samples and references.")] = 0,
    json_out: JsonOpt = None,
) -> None:
    """Print (and save) every metric of a run or a sample file, with noise floors."""
    from ..metrics import evaluate_samples, format_evaluation

    with exit_on_error():
        if n is not None and n < 10:  # a negative n sliced samples[:n] silently
            raise GanflowError(f"--n must be an integer >= 10 (samples to evaluate), got {n}")
        check_outputs(json_out)
        if source.is_dir():
            from ..training import sample_run

            cfg_path = source / "config.json"
            if not cfg_path.exists():
                raise GanflowError(f"{str(source)!r} is not a run folder: no config.json in it")
            data = data or json.loads(cfg_path.read_text())["data"]
            if n is None:
                from ..data import load_data

                n = 10000 if load_data(data).image_shape is not None else 2500
            samples = sample_run(source, n, seed=seed).double().numpy()
        elif source.suffix.lower() == ".npy":
            if data is None:
                raise GanflowError("evaluating a .npy file needs --data (the reference)")
            try:
                samples = np.load(source, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise GanflowError(f"cannot read samples from {str(source)!r}: {exc}") from exc
            if n is None:
                from ..data import load_data

                n = 10000 if load_data(data).image_shape is not None else 2500
            samples = samples[:n] if samples.ndim == 2 else samples
        else:
            raise GanflowError(
                f"{str(source)!r} is neither a run folder nor a .npy file of samples"
            )
        res = evaluate_samples(samples, data, seed=seed)
    typer.echo(format_evaluation(res))
    if json_out is not None:
        write_json(json_out, res)
        typer.echo(f"wrote {json_out}")


def track(
    run: Annotated[Path, typer.Argument(help="a run folder of `ganflow train` on a 1-D or "
                                        "2-D mixture (any method)")],
    n: Annotated[int, typer.Option("--n", help="generator samples per snapshot.")] = 5000,
    cells: Annotated[int | None, typer.Option(
        "--cells", help="PDE cells per dimension (default: resolve the finest feature).")
    ] = None,
    box: BoxOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the samples.")] = 0,
    draws: Annotated[int, typer.Option(
        "--draws", min=1, help="independent draws of n samples averaged per snapshot, for "
        "the gap and the floor alike (one draw's ratio scatters by tens of percent).")] = 1,
    json_out: JsonOpt = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="figure (default: RUN/samples/tracking.png).")] = None,
) -> None:
    """Does the generator follow the gradient flow? Compare it with the PDE's u(t).

    Per snapshot: the L1 gap between the generator's KDE and u(t), its noise floor (n exact
    samples of u(t)), the verdict "on flow" (gap <= 2 x floor), and JSD to rho_d of the
    generator next to the PDE's (the flow's own progress); with --draws R, each a mean
    over R independent draws."""
    from ..tracking import plot_tracking, track_run

    with exit_on_error():
        check_outputs(json_out, plot)
        res = track_run(run, n=n, cells=cells, box=box, seed=seed, draws=draws,
                        progress=sys.stderr.isatty())
    g = res.pde.grid
    mean_of = f" (mean of {draws} draws)" if draws > 1 else ""
    typer.echo(f"{res.divergence} flow from u(0) = {res.start}: {res.n_samples} "
               f"samples per snapshot{mean_of}, PDE on {g.cells}^{g.dim} cells, "
               f"box {g.half_width:.3g}")
    typer.echo(f"{'iteration':>10} {'flow t':>9} {'L1 gap':>10} {'L1 floor':>10} "
               f"{'on flow':>8} {'JSD gap':>10} {'JSD(G,rho_d)':>13} {'JSD(u,rho_d)':>13}")
    on = res.on_flow
    for k in range(len(res.times)):
        typer.echo(f"{res.iterations[k]:>10} {res.times[k]:>9.4g} {fmt(res.l1_gap[k]):>10} "
                   f"{fmt(res.l1_floor[k]):>10} {'yes' if on[k] else 'NO':>8} "
                   f"{fmt(res.jsd_gap[k]):>10} "
                   f"{fmt(res.gen_jsd[k]):>13} {fmt(res.pde_jsd[k]):>13}")
    typer.echo(f"on the flow (L1 gap <= 2 x floor) at {int(on.sum())} of {len(on)} times")
    if json_out is not None:
        write_json(json_out, res.to_dict())
        typer.echo(f"wrote {json_out}")
    path = plot_tracking(res, plot or Path(run) / "samples" / "tracking.png")
    typer.echo(f"wrote {path}")


