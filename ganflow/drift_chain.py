r"""A generator that IS the flow map: G_0 followed by every recorded Euler step of ODE (2).

Algorithm 1 wants G_{n+1} = (I + eps_n m(e^{-f_n}) grad f_n) o G_n and gets it only up
to the fit error of (23), which compounds (docs/theory.md section 8). A
:class:`DriftChain` composes instead of fitting: it records, for every iteration n, the
discriminator f_n that moved the particles and the step eps_n it moved them by, and its
samples are

    G_t(z) = Phi_{n-1} o ... o Phi_0 (G_0(z)),   Phi_k(x) = x + eps_k m(e^{-f_k(x)}) grad f_k(x),

the particle solver's own (Euler-discretised, learned-drift) flow map X_t applied to a
fresh draw of the start G_0(z): a residual network with one block per iteration, each
block the drift of eq. (20) / section 7 by the discriminator of its iteration. It has no
fit, so no fit error: a particle x_i = G_0(z_i) moved by the particle method is exactly
G_t(z_i), and any other latent is moved by the same steps. Its law is the particles' law
u_t for every latent, not only at the N that the particles started from.

The price is memory and sampling time linear in the number of iterations: one copy of D's
state (its floating tensors, kept as float32 on D's device) per step, and one gradient of
D per step and sample. ``every`` > 1 keeps one state in ``every``, each then used for the
``every`` Euler steps of its window: an approximation, the points being moved by a
discriminator up to ``every`` - 1 iterations old.

In the faithful mode a step also clips each point's move to ``limit`` (the CFL rule of
:func:`ganflow.algorithm.controlled_move`); the chain records the limit with eps.
"""

from __future__ import annotations

import bisect
import copy
import math

import torch
from torch import nn

from ._errors import GanflowError
from .algorithm import discriminator_drift

__all__ = ["DriftChain"]

# floats per storage block of recorded states (64 MiB of float32; at most 1024 rows)
_BLOCK_FLOATS = 16 * 2**20


class _StateRows:
    """Append-only rows (the recorded states) kept in large blocks.

    One small tensor per state would be one allocation per iteration that outlives the
    iteration's temporaries (D's activations on a batch, the drift at N points): the
    allocator interleaves them, cannot give the freed temporaries' memory back, and the
    process grows far beyond the states themselves. A block holds many rows (one large
    allocation, returned whole when freed), so appending a state allocates nothing."""

    def __init__(self, width: int, device: torch.device) -> None:
        self.width, self.device = width, device
        self._block_rows = min(1024, max(1, _BLOCK_FLOATS // max(width, 1)))
        self._blocks: list[torch.Tensor] = []
        self._starts: list[int] = []  # index of each block's first row
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self._count:
            raise IndexError(f"state {i} of {self._count}")
        b = bisect.bisect_right(self._starts, i) - 1
        return self._blocks[b][i - self._starts[b]]

    def append(self, row: torch.Tensor) -> None:
        last = self._blocks[-1] if self._blocks else None
        if last is None or self._count - self._starts[-1] == last.shape[0]:
            last = torch.empty(self._block_rows, self.width, device=self.device)
            self._blocks.append(last)
            self._starts.append(self._count)
        last[self._count - self._starts[-1]].copy_(row)
        self._count += 1

    def between(self, start: int, end: int) -> torch.Tensor:
        """Rows [start, end) as one new (end - start, width) CPU tensor."""
        parts = []  # each block's slice of [start, end)
        for block, first in zip(self._blocks, self._starts, strict=True):
            lo, hi = max(start, first), min(end, first + block.shape[0], self._count)
            if lo < hi:
                parts.append(block[lo - first:hi - first])
        return torch.cat(parts).cpu() if parts else torch.empty(0, self.width)

    def replace(self, rows: torch.Tensor) -> None:
        """Hold ``rows`` (n, width) as the states (a block of their own)."""
        self._blocks = [rows.to(self.device)] if rows.shape[0] else []
        self._starts = [0] if rows.shape[0] else []
        self._count = rows.shape[0]


class DriftChain:
    r"""The recorded steps (f_k, eps_k, limit_k) of ODE (2) and the map they compose.

    Args:
        D: a discriminator of the architecture that will be recorded; a private copy is
            kept as the template that each step's state is loaded into (D is not changed).
        divergence: the drift m of every step (:mod:`ganflow.divergences`).
        every: record one step in ``every`` (1: every step, the exact flow map of the
            particles); the recorded f is used for the steps up to the next record.
    """

    def __init__(self, D: nn.Module, *, divergence: str, every: int = 1) -> None:
        if not isinstance(every, int) or every < 1:
            raise GanflowError(f"DriftChain: every must be a positive integer, got {every!r}")
        self.template = copy.deepcopy(D)
        for p in self.template.parameters():
            p.requires_grad_(False)  # only grad wrt the points is taken
        self._names = [k for k, v in self.template.state_dict().items()
                       if v.is_floating_point()]
        self.divergence = divergence
        self.every = every
        # the flat float states of the recorded D's (len() and [i] as a list)
        self.states = _StateRows(self.state_size, self.template_device)
        self.steps: list[tuple[int, float, float]] = []  # (state index, eps, limit)

    def __len__(self) -> int:
        """The number of Euler steps (iterations) the chain moves a point by."""
        return len(self.steps)

    @property
    def state_size(self) -> int:
        """Floats per recorded discriminator state."""
        sd = self.template.state_dict()
        return sum(sd[k].numel() for k in self._names)

    def _flat(self, D: nn.Module) -> torch.Tensor:
        sd = D.state_dict()
        return torch.cat([sd[k].detach().reshape(-1).float() for k in self._names])

    def _load(self, flat: torch.Tensor) -> None:
        sd = self.template.state_dict()
        offset = 0
        with torch.no_grad():
            for k in self._names:
                t = sd[k]
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def record(self, D: nn.Module, eps: float, *, limit: float = math.inf) -> None:
        """Append the step x <- x + eps m(e^{-f}) grad f (each point's move clipped to norm
        ``limit``) with D's current state as f (or, between records, the last recorded f)."""
        if not (math.isfinite(eps) and eps >= 0):
            raise GanflowError(f"DriftChain.record: eps must be finite and >= 0, got {eps!r}")
        if len(self.steps) % self.every == 0:
            self.states.append(self._flat(D))
        self.steps.append((len(self.states) - 1, float(eps), float(limit)))

    @property
    def template_device(self) -> torch.device:
        return next(iter(self.template.state_dict().values())).device

    def apply(self, x: torch.Tensor, *, steps: int | None = None, start: int = 0,
              chunk: int = 8192, progress: bool = False) -> torch.Tensor:
        r"""x (n, d) moved by the recorded steps ``start`` to ``steps`` - 1 (by default all
        of them): the flow map X_t, t the sum of their eps. Moving by steps [0, k) then
        [k, n) is bit for bit moving by [0, n). Returns a new tensor; x is not changed.
        ``progress``: a bar over the steps on stderr (a long chain takes minutes)."""
        n_steps = len(self.steps) if steps is None else steps
        if not (isinstance(n_steps, int) and 0 <= n_steps <= len(self.steps)):
            raise GanflowError(f"DriftChain.apply: steps must be an integer in [0, "
                               f"{len(self.steps)}], got {steps!r}")
        if not (isinstance(start, int) and 0 <= start <= n_steps):
            raise GanflowError(f"DriftChain.apply: start must be an integer in [0, "
                               f"{n_steps}], got {start!r}")
        x = x.detach().clone()
        loaded = -1
        todo = range(start, n_steps)
        if progress:
            from tqdm.auto import tqdm

            todo = tqdm(todo, desc=f"{x.shape[0]} samples through the chain", unit="step",
                        dynamic_ncols=True, leave=False)
        for k in todo:
            state, eps, limit = self.steps[k]
            if state != loaded:
                self._load(self.states[state])
                loaded = state
            move = eps * discriminator_drift(self.template, x, divergence=self.divergence,
                                             chunk=chunk)
            if math.isfinite(limit):
                norm = move.norm(dim=-1, keepdim=True)
                move = move * torch.clamp(limit / norm.clamp_min(1e-30), max=1.0)
            x.add_(move)
        return x

    def flow_time(self, steps: int | None = None) -> float:
        """The flow time the first ``steps`` steps advance (all by default)."""
        return sum(eps for _, eps, _ in self.steps[:steps])

    # ------------------------------------------------------------ persistence
    def states_between(self, start: int, end: int) -> torch.Tensor:
        """The recorded states [start, end) as one (end - start, state size) CPU tensor."""
        return self.states.between(start, end)

    def steps_tensor(self) -> torch.Tensor:
        """The steps as (steps, 3) float64 rows (state index, eps, limit)."""
        return torch.tensor(self.steps, dtype=torch.float64).reshape(-1, 3).contiguous()

    def restore(self, states: torch.Tensor, steps: torch.Tensor) -> None:
        """Set the chain to ``states`` (records, state size) and ``steps`` (steps, 3), as
        :meth:`states_between` and :meth:`steps_tensor` gave them."""
        if states.ndim != 2 or states.shape[1] != self.state_size:
            raise GanflowError(
                f"chain_states has shape {tuple(states.shape)}; expected (records, "
                f"{self.state_size}) for this discriminator")
        rows = [(int(i), float(e), float(lim)) for i, e, lim in steps.tolist()]
        if any(not 0 <= i < states.shape[0] for i, _, _ in rows):
            raise GanflowError(f"chain_steps names a state beyond the {states.shape[0]} "
                               "recorded")
        self.states.replace(states)
        self.steps = rows

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The chain as two tensors: ``chain_states`` (records, state size) and
        ``chain_steps`` (steps, 3) float64 rows (state index, eps, limit)."""
        return {"chain_states": self.states_between(0, len(self.states)),
                "chain_steps": self.steps_tensor()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` gave (on the template's device)."""
        self.restore(tensors["chain_states"], tensors["chain_steps"])
