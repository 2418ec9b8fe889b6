r"""Algorithm 1 (``flow``, docs/theory.md section 5) and the GAN baselines (``gan``,
``gan-ns``): one iteration is :func:`ganflow.algorithm.algorithm_step`."""

from __future__ import annotations

from ...algorithm import StepInfo, algorithm_step
from .base import Method, register_method


@register_method("flow", "gan", "gan-ns")
class GeneratorMethod(Method):
    """Calibrate D, push G(z) by the drift (or take the GAN loss), fit G: eqs. (21)-(23)."""

    step_method = None  # StepConfig.method is the --method name: flow, gan or gan-ns

    def step(self) -> StepInfo:
        s = self.s
        return algorithm_step(s.G, s.D, s.opt_g, s.opt_d, s.sample_data, s.sample_latent,
                              s.step_cfg)
