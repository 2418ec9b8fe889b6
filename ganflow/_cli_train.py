"""Training commands of the CLI (``train``, ``sample``, ``plot``); registered by cli.py."""

# No "from __future__ import annotations": typer reads the Annotated options, built
# from locals of register(), at definition time.
import os
from pathlib import Path
from typing import Annotated

import typer

from ._errors import GanflowError


def _fail(exc: BaseException, code: int = 2):
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


# the options of `train` that apply to a resume; every other one is the run's own, read
# from its config.json, and given beside --resume it would be silently ignored
_RESUME_OPTIONS = ("resume", "out", "iterations", "device", "threads", "progress")


def _given(ctx: typer.Context, name: str) -> bool:
    src = ctx.get_parameter_source(name)
    return src is not None and src.name in ("COMMANDLINE", "ENVIRONMENT")


def _refuse_options_beside_resume(ctx: typer.Context) -> None:
    extra = [p.opts[0] for p in ctx.command.params
             if p.name not in _RESUME_OPTIONS and p.opts and _given(ctx, p.name)]
    if extra:
        raise GanflowError(
            f"--resume continues a run with the options of its config.json; {', '.join(extra)} "
            "would be ignored: remove them (only --iterations, --device, --threads and "
            "--progress apply to a resume), or train a new run with --out")


def _check_output_file(out: Path, force: bool) -> None:
    """Before any work: ``out`` is a file we may write (an existing one only with
    ``--force``), in a writable folder."""
    if out.is_dir():
        raise GanflowError(f"--out {str(out)!r} is a folder; give a .npy file name")
    if (out.exists() or out.is_symlink()) and not force:
        raise GanflowError(f"--out {str(out)!r} exists; add --force to overwrite it")
    probe = out.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise GanflowError(f"cannot write --out {str(out)!r}: {str(probe)!r} is not a "
                           "writable folder")


def register(app: typer.Typer) -> None:
    """Add ``train``, ``sample`` and ``plot`` to ``app``."""
    from .trainer import TrainConfig

    d = TrainConfig()

    def opt(name: str, help: str):
        return typer.Option(name, help=help)

    @app.command()
    def train(
        ctx: typer.Context,
        data: Annotated[str, opt("--data", "ring8, grid25, swissroll, moons, checkerboard, "
                                 "circles, bimodal, normal:MEAN:STD, a mixture .json, a "
                                 ".npy/.csv table of shape (n, d); images: digits, mnist, "
                                 "mnist:PATH (.npz/.npy/PNG folder).")] = d.data,
        method: Annotated[str, opt("--method", "flow (Algorithm 1), gan (saturating "
                                   "ln(1-D)), gan-ns (non-saturating -ln D), particles (no "
                                   "generator: N particles moved by D's drift), flow-map (a "
                                   "generator regressed on N latent-particle pairs moved by "
                                   "D's drift: it follows the flow).")] = d.method,
        divergence: Annotated[str, opt("--divergence", "flow's divergence: jsd, kl, ns, "
                                       "chi2.")] = d.divergence,
        eps: Annotated[float, opt("--eps", "flow time step of eq. (22) (faithful: the "
                                  "largest one).")] = d.eps,
        fit_steps: Annotated[int | None, opt("--fit-steps", "K descent steps on the same z "
                                             "and targets (flow-map: on fresh batches of "
                                             "pairs); default 1 (the paper), flow-map 10.")
                             ] = d.fit_steps,
        pairing: Annotated[str, opt("--pairing", "index (the paper's MSE), assignment "
                                    "(optimal re-pairing) or energy (energy distance "
                                    "between the sets).")] = d.pairing,
        d_steps: Annotated[int | None, opt("--d-steps", "discriminator steps per iteration "
                                           "(faithful: the least); default 1, flow-map 20.")
                           ] = d.d_steps,
        d_warmup: Annotated[int | None, opt("--d-warmup", "discriminator steps before the "
                                            "first move; default 0, flow-map 500.")
                            ] = d.d_warmup,
        d_penalty: Annotated[float, opt("--d-penalty", "gamma of an R1 gradient penalty "
                                        "(gamma/2) E_data |grad f|^2 on D; 0: off.")
                             ] = d.d_penalty,
        batch_size: Annotated[int, opt("--batch-size", "m, samples per batch.")] = d.batch_size,
        lr_g: Annotated[float, opt("--lr-g", "generator learning rate.")] = d.lr_g,
        lr_d: Annotated[float, opt("--lr-d", "discriminator learning rate.")] = d.lr_d,
        optimizer: Annotated[str, opt("--optimizer", "adam or sgd.")] = d.optimizer,
        beta1: Annotated[float, opt("--beta1", "Adam's beta1.")] = d.beta1,
        lr_decay: Annotated[float, opt("--lr-decay", "final / initial learning rate "
                                       "(linear decay over the run).")] = d.lr_decay,
        eps_decay: Annotated[float, opt("--eps-decay", "final / initial eps (linear decay "
                                        "over the run, as --lr-decay); anneals particles.")]
        = d.eps_decay,
        width: Annotated[int | None, opt("--width", "hidden units per layer (default 128), "
                                         "or conv channels for image data (default 32).")]
        = d.width,
        depth: Annotated[int, opt("--depth", "hidden layers (MLPs; not image data).")] = d.depth,
        latent_dim: Annotated[int | None, opt("--latent-dim", "dimension of z ~ N(0, I) "
                                              "(default 2 for d <= 2, 16 for images, else "
                                              "d).")] = d.latent_dim,
        activation: Annotated[str, opt("--activation", "relu, leaky_relu, elu, silu, "
                                       "tanh.")] = d.activation,
        seed: Annotated[int, opt("--seed", "seed of initialisation and batches.")] = d.seed,
        device: Annotated[str, opt("--device", "cpu, cuda, cuda:1, ...")] = d.device,
        iterations: Annotated[int | None, opt("--iterations", "iterations in all (default "
                                              "10000, 3000 for images; with --resume: "
                                              "continue up to this).")] = None,
        eval_every: Annotated[int, opt("--eval-every", "evaluate and checkpoint every N "
                                       "iterations.")] = d.eval_every,
        faithful: Annotated[bool, opt("--faithful/--no-faithful", "faithful ODE simulation: "
                                      "CFL step control, calibrated D, accurate fit.")]
        = d.faithful,
        cfl: Annotated[float, opt("--cfl", "faithful: largest target move / data length "
                                  "scale.")] = d.cfl,
        calib_tol: Annotated[float, opt("--calib-tol", "faithful: D is calibrated when a "
                                        "step improves its held-out loss by less.")]
        = d.calib_tol,
        calib_max_steps: Annotated[int, opt("--calib-max-steps", "faithful: cap on D steps.")]
        = d.calib_max_steps,
        fit_tol: Annotated[float, opt("--fit-tol", "faithful: fit until residual < tol x "
                                      "displacement.")] = d.fit_tol,
        fit_max_steps: Annotated[int, opt("--fit-max-steps", "faithful: cap on fit steps.")]
        = d.fit_max_steps,
        step_quantile: Annotated[float, opt("--step-quantile", "faithful: the CFL step is "
                                            "set by this quantile of |drift| (1: the max); "
                                            "faster points are clipped.")] = d.step_quantile,
        fit_solver: Annotated[str, opt("--fit-solver", "faithful: optimizer (--optimizer "
                                       "steps) or gauss-newton (scale-aware least "
                                       "squares).")]
        = d.fit_solver,
        init: Annotated[str, opt("--init", "start law: any --data spec of the data's "
                                 "dimension (normal:MEAN:STD, a mixture .json, a .npy); the "
                                 "generator is fitted to it before iteration 0 (default: "
                                 "the untrained generator's law).")] = d.init,
        particles: Annotated[int, opt("--particles", "particles / flow-map: how many "
                                      "particles / latent-particle pairs (N).")] = d.particles,
        particle_init: Annotated[str, opt("--particle-init", "particles: start law: "
                                          "'generator' (the untrained generator's law), or "
                                          "any --data spec of the data's dimension "
                                          "(default N(0, I)).")] = d.particle_init,
        distil: Annotated[bool, opt("--distil/--no-distil", "particles: afterwards fit a "
                                    "generator to the particles set-wise (a sampler).")]
        = d.distil,
        distil_iterations: Annotated[int, opt("--distil-iterations", "particles: steps of "
                                              "the distillation fit.")] = d.distil_iterations,
        threads: Annotated[int, opt("--threads", "CPU threads for torch (small networks run "
                                    "fastest on 1).")] = 1,
        out: Annotated[Path | None, opt("--out", "new run folder (default: runs/<data>-"
                                        "<method>-s<seed>).")] = None,
        resume: Annotated[Path | None, opt("--resume", "continue this run folder (other "
                                           "options but --iterations and --device are "
                                           "taken from it).")] = None,
        progress: Annotated[bool, opt("--progress/--no-progress", "show a progress bar.")]
        = True,
    ) -> None:
        """Train a generator by Algorithm 1 (or a GAN baseline, or particles); leaves a run
        folder."""
        import torch

        from . import trainer as tr

        torch.set_num_threads(max(1, threads))
        try:
            if resume is not None:
                if out is not None:
                    raise GanflowError("give --resume RUN or --out DIR, not both")
                _refuse_options_beside_resume(ctx)
                result = tr.resume(resume, iterations=iterations,
                                   device=device if _given(ctx, "device") else None,
                                   progress=progress)
            else:
                cfg = tr.TrainConfig(
                    data=data, method=method, divergence=divergence, eps=eps,
                    fit_steps=fit_steps, pairing=pairing, d_steps=d_steps, d_warmup=d_warmup,
                    d_penalty=d_penalty,
                    batch_size=batch_size, lr_g=lr_g, lr_d=lr_d, optimizer=optimizer,
                    beta1=beta1, lr_decay=lr_decay, eps_decay=eps_decay, width=width, depth=depth,
                    latent_dim=latent_dim, activation=activation, seed=seed, device=device,
                    iterations=iterations,
                    eval_every=eval_every, faithful=faithful, cfl=cfl, calib_tol=calib_tol,
                    calib_max_steps=calib_max_steps, fit_tol=fit_tol,
                    fit_max_steps=fit_max_steps, step_quantile=step_quantile,
                    fit_solver=fit_solver, init=init, particles=particles,
                    particle_init=particle_init,
                    distil=distil, distil_iterations=distil_iterations,
                )
                if method in ("gan", "gan-ns") and _given(ctx, "divergence"):
                    # the baselines' generator losses ignore it (algorithm.py); only `ganflow
                    # track` reads it, as the flow to compare the run with
                    typer.echo(f"warning: --divergence {divergence} does not change --method "
                               f"{method} training (its generator loss is fixed); it only "
                               "names the flow `ganflow track` compares the run with",
                               err=True)
                result = tr.train(cfg, out=out, progress=progress)
        except GanflowError as exc:
            _fail(exc)
        except tr.TrainingDivergedError as exc:
            _fail(f"{exc}; the last good checkpoint is kept in its run folder", 1)
        if os.environ.get("RANK", "0") != "0":
            return  # under torchrun, rank 0 reports for all
        m = result.metrics
        shown = ", ".join(f"{k} {m[k]:.4g}" if isinstance(m[k], float) else f"{k} {m[k]}"
                          for k in ("modes", "hq", "mode_kl", "frechet_distance", "class_coverage",
                                    "energy", "w2") if k in m)
        typer.echo(f"{result.status} at iteration {result.iteration} (flow time "
                   f"{result.flow_time:.4g}, {result.seconds:.1f} s): {shown}")
        typer.echo(f"run folder: {result.run_dir}")
        if result.status == "interrupted":
            typer.echo(f"checkpoint saved; continue with: ganflow train --resume "
                       f"{result.run_dir}", err=True)
            raise typer.Exit(130)

    @app.command()
    def sample(
        run: Annotated[Path, typer.Argument(help="a run folder of ganflow train.")],
        n: Annotated[int, opt("--n", "number of samples.")] = 1000,
        out: Annotated[Path, opt("--out", "output .npy file (shape (n, d)).")] = Path(
            "samples.npy"),
        seed: Annotated[int, opt("--seed", "seed of the latent draw.")] = 0,
        snapshot: Annotated[int | None, opt("--snapshot", "draw from the generator saved at "
                                            "this evaluation's iteration (snapshots/G-*; "
                                            "default: the latest checkpoint).")] = None,
        force: Annotated[bool, opt("--force", "overwrite --out if it exists.")] = False,
    ) -> None:
        """Draw samples from a trained run's generator (or its particles) into a .npy file."""
        import io

        import numpy as np

        from ._io import write_bytes_atomic
        from .trainer import sample_run

        try:
            if out.suffix.lower() != ".npy":
                raise GanflowError(f"--out must end in .npy, got {str(out)!r}")
            _check_output_file(out, force)  # before loading the run
            x = sample_run(run, n, seed=seed, snapshot=snapshot).numpy()
        except GanflowError as exc:
            _fail(exc)
        buf = io.BytesIO()
        np.save(buf, x)
        try:
            write_bytes_atomic(out, buf.getvalue())  # nothing half-written on a full disk
        except OSError as exc:
            _fail(f"cannot write {str(out)!r}: {exc.strerror or exc}", 1)
        typer.echo(f"wrote {out} (shape {x.shape})")

    @app.command()
    def plot(
        run: Annotated[Path, typer.Argument(help="a run folder of ganflow train.")],
    ) -> None:
        """Redraw a run's figures (samples over the target, metric curves) into samples/."""
        from .trainer import plot_run

        try:
            paths = plot_run(run)
        except GanflowError as exc:
            _fail(exc)
        for p in paths:
            typer.echo(f"wrote {p}")
