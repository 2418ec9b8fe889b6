r"""``summary.md``: a run's outcome in a few lines, rewritten when a run ends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._io import write_bytes_atomic
from ..metrics import QUALITY_BAR, first_at_quality_bar
from .reading import read_metrics

if TYPE_CHECKING:
    from .session import Session

__all__ = ["write_summary"]


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_summary(s: Session, status: str) -> None:
    rows = read_metrics(s.run_dir)
    cfg = s.cfg
    lines = [f"# ganflow run: {cfg.method} on {s.data.name}", "",
             f"- status: **{status}** at iteration {s.iteration} of {cfg.iterations}",
             f"- flow time: {s.flow_time:.4g}; wall time: {s.seconds:.1f} s on {cfg.device}",
             f"- method {cfg.method}, divergence {cfg.divergence}, eps {cfg.eps}"
             + (f" (decaying to {cfg.eps_decay:g} x)" if cfg.eps_decay != 1 else "")
             # K and the pairing shape a generator's fit, which particle methods lack
             + (f", K={cfg.fit_steps}, pairing {cfg.pairing}"
                if "g_loss" in s.method.logged else "")
             + f", D: {cfg.optimizer} lr {cfg.lr_d:g} x {cfg.d_steps} steps, batch "
             f"{cfg.batch_size}, R1 {cfg.d_penalty:g}, faithful {cfg.faithful}, "
             f"seed {cfg.seed}"]
    if cfg.method in ("gan", "gan-ns"):
        lines.append(f"- the {cfg.method} loss does not use the divergence; "
                     f"{cfg.divergence} only names the flow `ganflow track` compares with")
    if cfg.init:
        lines.append(f"- started from --init {cfg.init}")
    lines += s.method.summary_lines()
    lines.append("")
    if rows:
        last = rows[-1]
        lines.append("| " + " | ".join(k for k in last) + " |")
        lines.append("|" + "---|" * len(last))
        lines.append("| " + " | ".join(_fmt(v) for v in last.values()) + " |")
        if s.data.mixture is not None:
            hit = first_at_quality_bar(rows, s.data.mixture.n_components)
            lines += ["", f"Quality bar (all modes, HQ >= {100 * QUALITY_BAR['hq']:.0f} %, "
                      f"mode-weight KL <= {QUALITY_BAR['mode_kl']}): "
                      + (f"first met at iteration {hit['iteration']} ({hit['seconds']:.1f} s)"
                         if hit else "not met")]
    write_bytes_atomic(s.run_dir / "summary.md", ("\n".join(lines) + "\n").encode())
