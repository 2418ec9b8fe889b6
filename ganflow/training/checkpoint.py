r"""Checkpoints of a run: ``checkpoints/state-<it>.safetensors`` (weights, optimizer
tensors, every rank's batch stream, the method's tensors) + ``state-<it>.json``
(everything else) + ``latest.json`` (a copy of the newest state-*.json, written last: the
commit point; a crash before it leaves the previous state). The two newest are kept; one
that does not load is skipped for the older one (:mod:`ganflow.training._runfolder`)."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .._errors import GanflowError, TrainingDivergedError
from .._io import write_json_atomic, write_safetensors_atomic
from ..algorithm import StepInfo
from . import _runfolder

if TYPE_CHECKING:
    from .session import Session

__all__ = ["load_checkpoint", "save_checkpoint", "state_tensors"]

_OPTIMIZERS = ("opt_g", "opt_d")


def state_tensors(s: Session) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a checkpoint, and the optimizers' non-tensor state."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {}
    for name, net in (("G", s.G), ("D", s.D)):
        for k, v in net.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().cpu().contiguous()
    for name in _OPTIMIZERS:
        sd = getattr(s, name).state_dict()
        scalars: dict = {}
        for idx, st in sd["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"{name}.{idx}.{k}"] = v.detach().cpu().contiguous()
                else:
                    scalars[f"{idx}.{k}"] = v
        meta[name] = {"param_groups": sd["param_groups"], "scalars": scalars,
                      "indices": sorted(sd["state"])}
    # every rank's batch generator (gathered by the loop), so a distributed resume is exact
    states = s.rng_states or [s.gen.get_state()]
    tensors["rng.train"] = states[0]
    for r, st in enumerate(states[1:], start=1):
        tensors[f"rng.train.{r}"] = st
    tensors.update(s.method.state_tensors())
    return tensors, meta


def save_checkpoint(s: Session) -> Path:
    """Write the session's state (refusing NaN/Inf: the last good checkpoint stays)."""
    for name, net in (("G", s.G), ("D", s.D)):
        for pname, p in net.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingDivergedError(
                    f"parameter {name}.{pname} is NaN/Inf at iteration {s.iteration}; "
                    "not saved")
    bad = s.method.check_finite()
    if bad:
        raise TrainingDivergedError(f"{bad} are NaN/Inf at iteration {s.iteration}; not saved")
    ck = s.run_dir / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    tensors, meta = state_tensors(s)
    # weights, then state-<it>.json (this checkpoint's own record, for a fallback when a
    # newer one is damaged), then latest.json (the commit); each is written temp + fsync
    # + rename, so a kill at any moment leaves a loadable state
    fname, sname = _runfolder.checkpoint_files(s.iteration)
    write_safetensors_atomic(ck / fname, tensors)
    state = {"iteration": s.iteration, "flow_time": s.flow_time, "seconds": s.seconds,
             "weights": fname, "torch": torch.__version__, "world_size": s.ctx.world_size,
             **s.method.state_meta(),
             "optimizers": meta, "last_metrics": s.last_metrics,
             # step statistics since the last evaluation, so that an interrupted and
             # resumed run logs the same averages as one that never stopped
             "recent": [{k: (v if math.isfinite(v) else None) for k, v in asdict(r).items()}
                        for r in s.recent]}
    write_json_atomic(ck / sname, state)
    write_json_atomic(ck / "latest.json", state)
    # keep the newest two checkpoints: the one latest.json names, and one before it
    _runfolder.prune_checkpoints(ck, fname)
    return ck / fname


def load_checkpoint(s: Session, *, resuming: bool = False) -> None:
    """Set the session from the newest checkpoint that loads: a damaged or mismatched
    one is reported on stderr and the one before it used; none loading raises
    :class:`ganflow.training._runfolder.NoCheckpointError`."""
    _runfolder.load_newest_checkpoint(
        s.run_dir, lambda state, tensors: _load_state(s, state, tensors, resuming=resuming))


def _load_optimizer(opt: torch.optim.Optimizer, name: str, meta: dict, tensors: dict) -> None:
    st: dict = {}
    for idx in meta["indices"]:
        prefix = f"{name}.{idx}."
        entry = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        for k, v in meta["scalars"].items():
            i, key = k.split(".", 1)
            if int(i) == idx:
                entry[key] = v
        st[idx] = entry
    opt.load_state_dict({"state": st, "param_groups": meta["param_groups"]})


def _load_state(s: Session, state: dict, tensors: dict, *, resuming: bool) -> None:
    """Set every part of the session from one checkpoint (raises on a mismatch)."""
    for name, net in (("G", s.G), ("D", s.D)):
        net.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items()
                             if k.startswith(name + ".")})
    for name in _OPTIMIZERS:
        _load_optimizer(getattr(s, name), name, state["optimizers"][name], tensors)
    saved_world = int(state.get("world_size", 1))
    if resuming and saved_world != s.ctx.world_size:
        raise GanflowError(
            f"run {str(s.run_dir)!r} was trained on {saved_world} process(es); resume "
            f"it with the same number (now {s.ctx.world_size}): each rank's batch "
            "stream is part of the checkpoint")
    s.gen.set_state(tensors["rng.train" if s.ctx.rank == 0 else f"rng.train.{s.ctx.rank}"])
    s.method.load_state(tensors, state)
    s.iteration = int(state["iteration"])
    s.flow_time = float(state["flow_time"])
    s.seconds = float(state["seconds"])
    s.last_metrics = state.get("last_metrics") or {}
    s.recent = [StepInfo(**{k: (float("nan") if v is None else v) for k, v in r.items()})
                for r in state.get("recent", [])]
