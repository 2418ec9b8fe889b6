r"""What ``ganflow train`` resolves an unset option to, by method and data kind
(:meth:`TrainConfig.resolved`, :meth:`Method.defaults_for`), and that a set one is kept
and checked."""

from __future__ import annotations

import pytest

from ganflow._errors import GanflowError
from ganflow.data import load_data
from ganflow.training import TrainConfig


def _resolved(data: str, **options) -> dict:
    cfg = TrainConfig(**options).resolved(load_data(data))
    return {k: getattr(cfg, k) for k in DEFAULTS_BY_METHOD["flow"]}


# what `ganflow train` resolves for each method and data kind (config.py, methods/): the
# default method is flow-chain with the configuration that won the benchmarks on points
# (an SGD D at 0.1, batches of 1024, 4000 particles, eps 1 -> 0.1, 3000 iterations) and
# on images (the KL flow, R1 10, 2000 particles, eps -> 0.01); Algorithm 1 keeps its own
DEFAULTS_BY_METHOD = {
    "flow": dict(divergence="jsd", optimizer="adam", lr_d=1e-3, lr_decay=0.01, eps_decay=1.0,
                 batch_size=512, d_penalty=0.0, particles=10000, d_steps=1, d_warmup=0,
                 iterations=10000, width=128, latent_dim=2, lr_decay_iters=10000),
    "flow-chain": dict(divergence="jsd", optimizer="sgd", lr_d=0.1, lr_decay=1.0,
                       eps_decay=0.1, batch_size=1024, d_penalty=0.0, particles=4000,
                       d_steps=1, d_warmup=0, iterations=3000, width=128, latent_dim=2,
                       lr_decay_iters=3000),
    "flow-chain images": dict(divergence="kl", optimizer="adam", lr_d=1e-3, lr_decay=0.01,
                              eps_decay=0.01, batch_size=512, d_penalty=10.0, particles=2000,
                              d_steps=1, d_warmup=0, iterations=3000, width=32,
                              latent_dim=16, lr_decay_iters=3000),
}


def test_defaults_are_chosen_by_the_method_and_the_data():
    assert TrainConfig().method == "flow-chain"
    assert _resolved("ring8") == DEFAULTS_BY_METHOD["flow-chain"]
    assert _resolved("digits") == DEFAULTS_BY_METHOD["flow-chain images"]
    assert _resolved("ring8", method="flow") == DEFAULTS_BY_METHOD["flow"]
    assert _resolved("digits", method="flow") == {
        **DEFAULTS_BY_METHOD["flow"], "iterations": 3000, "width": 32, "latent_dim": 16,
        "lr_decay_iters": 3000}
    # flow-map keeps Algorithm 1's optimizer, batch and step, with its calibrated D
    fm = TrainConfig(method="flow-map").resolved(load_data("ring8"))
    assert (fm.optimizer, fm.batch_size, fm.eps_decay, fm.d_steps, fm.d_warmup) == (
        "adam", 512, 1.0, 20, 500)
    # explicit values are kept, one by one, whatever the method's defaults
    given = dict(optimizer="adam", lr_d=3e-3, batch_size=64, eps_decay=1.0, particles=300,
                 divergence="kl", d_penalty=0.5, iterations=7, width=8)
    for key, value in given.items():
        assert _resolved("ring8", **{key: value})[key] == value, key
        assert _resolved("digits", **{key: value})[key] == value, key
    # unset options stay unset until the data is known, and are stored resolved
    assert TrainConfig().batch_size is None and TrainConfig().optimizer is None


def test_unset_options_are_checked_when_set():
    for options, match in ((dict(lr_d=-1.0), "--lr-d must be a positive"),
                           (dict(eps_decay=2.0), r"--eps-decay must be in \(0, 1\]"),
                           (dict(batch_size=0), "--batch-size must be a positive integer"),
                           (dict(particles=1), "--particles must be at least 2"),
                           (dict(optimizer="rmsprop"), "unknown --optimizer"),
                           (dict(d_penalty=-1.0), "--d-penalty must be"),
                           (dict(divergence="hellinger"), "unknown divergence"),
                           # flow-chain fits no generator: the fit's knobs are refused
                           (dict(fit_steps=5), "--fit-steps 5 sets the generator's fit"),
                           (dict(pairing="assignment"), "--pairing assignment pairs")):
        with pytest.raises(GanflowError, match=match):
            TrainConfig(**options)
    TrainConfig(method="flow", fit_steps=5, pairing="assignment")  # Algorithm 1's knobs
    with pytest.raises(GanflowError, match="--method particles fits no generator"):
        TrainConfig(method="particles", fit_steps=3)
