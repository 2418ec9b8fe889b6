"""The ``ganflow`` command line: ``ganflow pde``, ``ganflow particles`` (and training)."""

from __future__ import annotations

import json
import math
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from . import _cli_train
from ._errors import GanflowError, NewtonConvergenceError
from ._io import check_writable, write_json_atomic

app = typer.Typer(
    name="ganflow",
    help="GANs as gradient flows: Fokker-Planck ground truth, particle flows, Algorithm 1.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"ganflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="print the version and exit.")] = False,
) -> None:
    """GANs as gradient flows: Fokker-Planck ground truth, particle flows, Algorithm 1."""

TargetOpt = Annotated[
    str,
    typer.Option(
        "--target",
        help="rho_d: ring8, grid25, bimodal, barrier, four2d, normal:MEAN:STD, or a "
        "JSON file {weights, means, stds}.",
    ),
]
InitOpt = Annotated[str, typer.Option("--init", help="rho_0, in the same forms as --target.")]
DivOpt = Annotated[
    str, typer.Option("--divergence", help="the flow: jsd (the paper), kl, ns, chi2.")
]
BoxOpt = Annotated[
    float | None,
    typer.Option("--box", help="half-width L of the box [-L, L]^d (default: means +- 6 std)."),
]
CellsOpt = Annotated[int, typer.Option("--cells", help="cells per dimension.")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="write results as JSON here.")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="write a PNG figure here.")]


def _fail(exc: Exception, code: int = 2):
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


@contextmanager
def _exit_on_error():
    """Bad input exits 2, a failed Newton solve exits 1, each with ``error: <message>``."""
    try:
        yield
    except GanflowError as exc:
        _fail(exc)
    except NewtonConvergenceError as exc:
        _fail(exc, 1)


def _check_outputs(json_out: Path | None = None, plot: Path | None = None) -> None:
    """Refuse an output that cannot be written BEFORE any work (a solve, an evaluation)."""
    if json_out is not None:
        check_writable(json_out, "--json")
    if plot is not None:
        from matplotlib.backend_bases import FigureCanvasBase

        kinds = FigureCanvasBase.get_supported_filetypes()
        ext = plot.suffix.lower().lstrip(".")
        if ext not in kinds:
            raise GanflowError(
                f"--plot {str(plot)!r}: expected an image file ending in one of "
                f"{', '.join('.' + k for k in sorted(kinds))}; got "
                f"{'.' + ext if ext else 'no extension'}"
            )
        check_writable(plot, "--plot")


def _write_json(path: Path, obj) -> None:
    """Write --json (checked writable up front; a full disk can still fail: one line)."""
    try:
        write_json_atomic(path, obj)
    except OSError as exc:
        _fail(f"cannot write --json {str(path)!r}: {exc.strerror or exc}", 1)


def _check_device(text: str) -> None:
    """A clean error for a device torch does not know or this machine does not have."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        raise GanflowError(
            f"unknown --device {text!r}: expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GanflowError(f"--device {text!r} asked for, but CUDA is not available here; "
                               "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GanflowError(f"--device {text!r}: this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise GanflowError(f"--device {text!r} asked for, but MPS is not available here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise GanflowError(f"unknown --device {text!r}: expected cpu, cuda, cuda:N or mps")


def _parse_times(text: str | None, t_end: float) -> list[float]:
    if not text:
        return []
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GanflowError(f"--save-at must be comma-separated numbers, got {text!r}") from None
    bad = [v for v in vals if not 0 <= v <= t_end]
    if bad:
        raise GanflowError(f"--save-at times must lie in [0, {t_end}], got {bad}")
    return vals


def _default_save_times(t_end: float, k: int = 4) -> list[float]:
    # geometric spacing shows both the fast early and the slow late dynamics
    return sorted({float(f"{t_end / 4**j:.6g}") for j in range(k)})


def _fmt(x: float) -> str:
    return f"{x:.3e}" if math.isfinite(x) else str(x)


@app.command()
def pde(
    target: TargetOpt = "bimodal",
    init: InitOpt = "normal:0:0.4",
    divergence: DivOpt = "jsd",
    box: BoxOpt = None,
    cells: CellsOpt = 800,
    t_end: Annotated[float, typer.Option("--t-end", help="final flow time.")] = 16.0,
    dt: Annotated[float, typer.Option("--dt", help="initial time step.")] = 0.01,
    dt_max: Annotated[
        float | None,
        typer.Option(
            "--dt-max", help="largest time step (dt grows x1.2 after easy steps); default t_end/40."
        ),
    ] = None,
    save_at: Annotated[
        str | None,
        typer.Option(
            "--save-at", help="comma-separated snapshot times (default: t_end/64, /16, /4, t_end)."
        ),
    ] = None,
    json_out: JsonOpt = None,
    plot: PlotOpt = None,
    snapshots: Annotated[bool, typer.Option(help="include the saved densities in --json.")] = False,
) -> None:
    """Solve the Fokker-Planck equation (25) of the chosen flow on a grid (1-D or 2-D)."""
    from .pde import solve_fokker_planck

    with _exit_on_error():
        _check_outputs(json_out, plot)
        times = _parse_times(save_at, t_end) or _default_save_times(t_end)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sol = solve_fokker_planck(
                target,
                init,
                divergence=divergence,
                box=box,
                cells=cells,
                t_end=t_end,
                dt=dt,
                dt_max=dt_max if dt_max is not None else max(dt, t_end / 40),
                save_at=times,
                progress=sys.stderr.isatty(),
            )
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
    g = sol.grid
    typer.echo(
        f"{sol.divergence} flow, target {sol.target}, init {sol.init}: dim {g.dim}, box "
        f"[-{g.half_width:g}, {g.half_width:g}], {g.cells} cells/dim, {sol.n_steps} steps "
        f"({sol.rejected_steps} rejected), mass error {sol.mass_error:.1e}"
    )
    typer.echo(f"{'t':>10} {'JSD':>10} {'L1':>10} {'max u/rho':>10} {'min u':>10}")
    for t in sol.snapshot_times:
        k = int(np.argmin(np.abs(sol.times - t)))
        typer.echo(
            f"{t:>10.4g} {_fmt(sol.jsd[k]):>10} {_fmt(sol.l1[k]):>10} "
            f"{sol.max_ratio[k]:>10.4g} {_fmt(sol.min_u[k]):>10}"
        )
    if json_out is not None:
        _write_json(json_out, sol.to_dict(with_snapshots=snapshots))
        typer.echo(f"wrote {json_out}")
    if plot is not None:
        from .plots import plot_solution

        plot_solution(sol, plot)
        typer.echo(f"wrote {plot}")


@app.command()
def particles(
    target: TargetOpt = "bimodal",
    init: InitOpt = "normal:0:0.4",
    divergence: DivOpt = "jsd",
    n: Annotated[float, typer.Option(
        "--n", help="number of particles (an integer; 1e6 notation accepted).")] = 2000,
    t_end: Annotated[float, typer.Option("--t-end", help="final flow time.")] = 2.0,
    dt: Annotated[
        float, typer.Option("--dt", help="time step (explicit: keep it <~ b^2).")
    ] = 0.005,
    method: Annotated[str, typer.Option("--method", help="euler or heun.")] = "heun",
    bandwidth: Annotated[
        str, typer.Option("--bandwidth", help="KDE bandwidth: 'silverman' or a number.")
    ] = "silverman",
    save_at: Annotated[
        str | None,
        typer.Option(
            "--save-at", help="comma-separated report times (default: t_end/8, /4, /2, t_end)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the initial draw.")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")] = "cpu",
    dtype: Annotated[str, typer.Option(
        "--dtype", help="float64 (reference) or float32 (2-4x faster KDE sums).")] = "float64",
    kde: Annotated[str, typer.Option(
        "--kde", help="KDE drift: binned (grid + FFT, O(N), default in 1-D/2-D) or direct "
        "(all N^2 pairs; the reference, and the only choice above 2-D).")] = "auto",
    box: BoxOpt = None,
    cells: CellsOpt = 400,
    no_pde: Annotated[bool, typer.Option("--no-pde", help="skip the PDE reference.")] = False,
    json_out: JsonOpt = None,
    plot: PlotOpt = None,
) -> None:
    """Simulate ODE (2) with N particles (KDE drift) and compare with the PDE solution."""
    from .kde import resolve_kde
    from .particles import l1_gap_to_pde, simulate_particles
    from .pde import solve_fokker_planck

    try:
        bw: float | str = bandwidth if bandwidth == "silverman" else float(bandwidth)
    except ValueError:
        _fail(GanflowError(f"--bandwidth must be 'silverman' or a number, got {bandwidth!r}"))
    import torch

    if dtype not in ("float32", "float64"):
        _fail(GanflowError(f"--dtype must be float32 or float64, got {dtype!r}"))
    with _exit_on_error():
        _check_device(device)
        _check_outputs(json_out, plot)
        times = _parse_times(save_at, t_end) or [t_end / 8, t_end / 4, t_end / 2, t_end]
        part = simulate_particles(
            target,
            init,
            divergence=divergence,
            n=int(n) if math.isfinite(n) and n == int(n) else n,
            t_end=t_end,
            dt=dt,
            method=method,
            bandwidth=bw,
            save_at=times,
            seed=seed,
            device=device,
            dtype=getattr(torch, dtype),
            progress=sys.stderr.isatty(),
            kde=kde,
        )
        sol, gap, gap_smooth = None, None, None
        dim = part.positions.shape[2]
        if not no_pde and dim <= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sol = solve_fokker_planck(
                    target,
                    init,
                    divergence=divergence,
                    box=box,
                    cells=cells,
                    t_end=t_end,
                    dt=min(dt * 4, 0.01),
                    save_at=list(part.times),
                )
            gap = l1_gap_to_pde(part, sol, bw)
            gap_smooth = l1_gap_to_pde(part, sol, bw, smooth_pde=True)
    typer.echo(
        f"{part.divergence} flow, target {part.target}: {part.positions.shape[1]} particles, "
        f"{part.n_steps} {method} steps in {part.seconds:.1f} s"
    )
    # "L1 to PDE*K": the PDE smoothed with the same kernel, so the KDE's own smoothing
    # bias cancels and only the particle dynamics' error and sampling noise remain.
    typer.echo(
        f"{'t':>8} {'bandwidth':>10} {'L1 to PDE':>10} {'L1 to PDE*K':>12} {'PDE JSD':>10}  mean"
    )
    for k, t in enumerate(part.times):
        pj = _fmt(sol.jsd[int(np.argmin(np.abs(sol.times - t)))]) if sol is not None else "-"
        g = _fmt(gap[k]) if gap is not None else "-"
        gs = _fmt(gap_smooth[k]) if gap_smooth is not None else "-"
        mean = np.array2string(part.positions[k].mean(0), precision=3)
        typer.echo(f"{t:>8.4g} {part.bandwidths[k]:>10.3g} {g:>10} {gs:>12} {pj:>10}  {mean}")
    if json_out is not None:
        out = {
            "divergence": part.divergence,
            "target": part.target,
            "n": int(part.positions.shape[1]),
            "method": method,
            "kde": resolve_kde(dim, kde),
            "dt": dt,
            "seed": seed,
            "seconds": part.seconds,
            "times": part.times.tolist(),
            "l1": None if gap is None else gap.tolist(),
            "l1_smoothed_pde": None if gap_smooth is None else gap_smooth.tolist(),
            "mean": part.means().tolist(),
            "var": part.variances().tolist(),
            "bandwidth": part.bandwidths.tolist(),
            "pde": None
            if sol is None
            else {k: v for k, v in sol.to_dict().items() if k in ("times", "jsd", "l1", "mass")},
        }
        _write_json(json_out, out)
        typer.echo(f"wrote {json_out}")
    if plot is not None and sol is not None:
        from .plots import plot_solution

        plot_solution(sol, plot, particles=part, particle_gap=(part.times, gap))
        typer.echo(f"wrote {plot}")


@app.command("eval")
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
    from .evaluation import evaluate_samples, format_evaluation

    with _exit_on_error():
        if n is not None and n < 10:  # a negative n sliced samples[:n] silently
            raise GanflowError(f"--n must be an integer >= 10 (samples to evaluate), got {n}")
        _check_outputs(json_out)
        if source.is_dir():
            from .trainer import sample_run

            cfg_path = source / "config.json"
            if not cfg_path.exists():
                raise GanflowError(f"{str(source)!r} is not a run folder: no config.json in it")
            data = data or json.loads(cfg_path.read_text())["data"]
            if n is None:
                from .data import load_data

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
                from .data import load_data

                n = 10000 if load_data(data).image_shape is not None else 2500
            samples = samples[:n] if samples.ndim == 2 else samples
        else:
            raise GanflowError(
                f"{str(source)!r} is neither a run folder nor a .npy file of samples"
            )
        res = evaluate_samples(samples, data, seed=seed)
    typer.echo(format_evaluation(res))
    if json_out is not None:
        _write_json(json_out, res)
        typer.echo(f"wrote {json_out}")


@app.command()
def track(
    run: Annotated[Path, typer.Argument(help="a run folder of `ganflow train` on a 1-D or "
                                        "2-D mixture (any method)")],
    n: Annotated[int, typer.Option("--n", help="generator samples per snapshot.")] = 5000,
    cells: Annotated[int | None, typer.Option(
        "--cells", help="PDE cells per dimension (default: resolve the finest feature).")
    ] = None,
    box: BoxOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the samples.")] = 0,
    json_out: JsonOpt = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="figure (default: RUN/samples/tracking.png).")] = None,
) -> None:
    """Does the generator follow the gradient flow? Compare it with the PDE's u(t).

    Per snapshot: the L1 gap between the generator's KDE and u(t), its noise floor (n exact
    samples of u(t)), the verdict "on flow" (gap <= 2 x floor), and JSD to rho_d of the
    generator next to the PDE's (the flow's own progress)."""
    from .tracking import plot_tracking, track_run

    with _exit_on_error():
        _check_outputs(json_out, plot)
        res = track_run(run, n=n, cells=cells, box=box, seed=seed,
                        progress=sys.stderr.isatty())
    g = res.pde.grid
    typer.echo(f"{res.divergence} flow from u(0) = {res.start}: {res.n_samples} "
               f"samples per snapshot, PDE on {g.cells}^{g.dim} cells, box {g.half_width:.3g}")
    typer.echo(f"{'iteration':>10} {'flow t':>9} {'L1 gap':>10} {'L1 floor':>10} "
               f"{'on flow':>8} {'JSD gap':>10} {'JSD(G,rho_d)':>13} {'JSD(u,rho_d)':>13}")
    on = res.on_flow
    for k in range(len(res.times)):
        typer.echo(f"{res.iterations[k]:>10} {res.times[k]:>9.4g} {_fmt(res.l1_gap[k]):>10} "
                   f"{_fmt(res.l1_floor[k]):>10} {'yes' if on[k] else 'NO':>8} "
                   f"{_fmt(res.jsd_gap[k]):>10} "
                   f"{_fmt(res.gen_jsd[k]):>13} {_fmt(res.pde_jsd[k]):>13}")
    typer.echo(f"on the flow (L1 gap <= 2 x floor) at {int(on.sum())} of {len(on)} times")
    if json_out is not None:
        _write_json(json_out, res.to_dict())
        typer.echo(f"wrote {json_out}")
    path = plot_tracking(res, plot or Path(run) / "samples" / "tracking.png")
    typer.echo(f"wrote {path}")


_cli_train.register(app)


def main() -> None:
    from ._interrupt import EXIT_CODE, MESSAGE, CtrlC, install

    install()  # already done by `import ganflow` for python -m ganflow / the script
    try:
        app()
    except CtrlC:
        typer.echo(f"error: {MESSAGE}", err=True)
        raise SystemExit(EXIT_CODE) from None


if __name__ == "__main__":
    main()
