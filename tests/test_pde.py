"""The Fokker-Planck solver against closed forms, conservation laws and refinement orders."""

import math
import warnings

import numpy as np
import pytest

import ganflow as gf
from ganflow import GanflowError, NewtonConvergenceError


def ou_density(x: np.ndarray, t: float, a, s2: float) -> np.ndarray:
    """N(a e^-t, 1 + (s^2 - 1) e^-2t) per coordinate, x of shape (..., d).

    The closed form of the KL flow, docs/theory.md section 7.
    """
    a = np.atleast_1d(np.asarray(a, dtype=float))
    m = a * math.exp(-t)
    v = 1 + (s2 - 1) * math.exp(-2 * t)
    return np.prod(np.exp(-((x - m) ** 2) / (2 * v)) / math.sqrt(2 * math.pi * v), axis=-1)


def l1_to_exact(sol, t, a, s2):
    g = sol.grid
    exact = ou_density(g.points(), t, a, s2).reshape(g.shape)
    return float(np.abs(sol.u(t) - exact).sum() * g.cell_volume)


def moments(sol, t):
    g = sol.grid
    u = sol.u(t).reshape(-1)
    pts = g.points()
    mean = (u[:, None] * pts).sum(0) * g.cell_volume
    var = (u[:, None] * (pts - mean) ** 2).sum(0) * g.cell_volume
    return mean, var


# ---------------------------------------------------------------- KL: exact answer
def test_kl_flow_matches_ornstein_uhlenbeck_closed_form_1d():
    a, s = 2.0, 0.5
    sol = gf.solve_fokker_planck("normal:0:1", f"normal:{a}:{s}", divergence="kl", box=8,
                                 cells=800, t_end=1.0, dt=0.0025, save_at=[0.25, 0.5])
    for t in (0.25, 0.5, 1.0):
        # measured errors are O(dt) = 1.6e-3 * t-ish (the dt-order test shows the constant);
        # 5e-3 leaves a margin of ~2 while a wrong drift or diffusion gives errors > 0.05
        assert l1_to_exact(sol, t, a, s * s) < 5e-3
        mean, var = moments(sol, t)
        assert abs(mean[0] - a * math.exp(-t)) < 2e-3
        assert abs(var[0] - (1 + (s * s - 1) * math.exp(-2 * t))) < 5e-3


def test_kl_flow_matches_closed_form_2d():
    a, s = (1.0, -0.5), 0.6
    sol = gf.solve_fokker_planck("normal:0,0:1", f"normal:{a[0]},{a[1]}:{s}", divergence="kl",
                                 box=6, cells=96, t_end=0.5, dt=0.005)
    assert l1_to_exact(sol, 0.5, a, s * s) < 1e-2
    mean, var = moments(sol, 0.5)
    np.testing.assert_allclose(mean, np.array(a) * math.exp(-0.5), atol=3e-3)
    np.testing.assert_allclose(var, 1 + (s * s - 1) * math.exp(-1.0), atol=1e-2)


# ------------------------------------------------------------ refinement orders
def _slope(x, y):
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def test_first_order_in_dt_against_closed_form():
    # fine grid (1600 cells: spatial error ~1e-5) so the time error dominates
    dts = [0.05, 0.025, 0.0125, 0.00625]
    errs = []
    for dt in dts:
        sol = gf.solve_fokker_planck("normal:0:1", "normal:1:0.5", divergence="kl", box=8,
                                     cells=1600, t_end=0.5, dt=dt)
        errs.append(l1_to_exact(sol, 0.5, 1.0, 0.25))
    assert 0.9 < _slope(dts, errs) < 1.1, errs


def test_second_order_in_h_against_closed_form():
    # tiny dt (time error ~1e-5) so the spatial error dominates
    hs, errs = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the coarsest grid does not resolve the init
        for cells in (16, 32, 64, 128):
            sol = gf.solve_fokker_planck("normal:0:1", "normal:1:0.5", divergence="kl", box=8,
                                         cells=cells, t_end=0.5, dt=1e-4)
            hs.append(sol.grid.h)
            errs.append(l1_to_exact(sol, 0.5, 1.0, 0.25))
    assert 1.85 < _slope(hs, errs) < 2.15, errs


def _coarsen(u: np.ndarray) -> np.ndarray:
    return 0.5 * (u[0::2] + u[1::2])


def test_jsd_flow_self_convergence_orders():
    # No closed form for the JSD flow: successive differences between refinements decay
    # at the scheme's order (Richardson), first in dt and second in h.
    t = 1.0
    diffs_dt, prev = [], None
    for dt in (0.04, 0.02, 0.01, 0.005):
        u = gf.solve_fokker_planck("bimodal", "normal:0:0.4", box=4.5, cells=400, t_end=t,
                                   dt=dt).u(t)
        if prev is not None:
            diffs_dt.append(np.abs(u - prev).sum())
        prev = u
    assert 0.85 < math.log2(diffs_dt[0] / diffs_dt[1]) < 1.15, diffs_dt
    assert 0.85 < math.log2(diffs_dt[1] / diffs_dt[2]) < 1.15, diffs_dt

    diffs_h, prev = [], None
    for cells in (80, 160, 320, 640):  # 40 cells (h = 0.23 vs std 0.4) is pre-asymptotic
        sol = gf.solve_fokker_planck("bimodal", "normal:0:0.4", box=4.5, cells=cells, t_end=t,
                                     dt=0.01)
        u = sol.u(t)
        if prev is not None:
            diffs_h.append(np.abs(_coarsen(u) - prev).sum() * sol.grid.h * 2)
        prev = u
    orders = [math.log2(diffs_h[k] / diffs_h[k + 1]) for k in range(2)]
    assert all(1.8 < p < 2.2 for p in orders), (diffs_h, orders)


# ------------------------------------------------------------- JSD: the theory
@pytest.fixture(scope="module")
def jsd_long():
    return gf.solve_fokker_planck("bimodal", "normal:0:0.4", divergence="jsd", box=4.5,
                                  cells=600, t_end=16.0, dt=0.01, dt_max=0.5, save_at=[1, 4])


def test_jsd_mass_is_conserved(jsd_long):
    assert jsd_long.mass_error < 1e-10


def test_jsd_is_non_increasing_at_every_step(jsd_long):
    # exact for backward Euler + convex phi; allow float round-off of the sum only
    assert (np.diff(jsd_long.jsd) <= 1e-14).all()


def test_density_stays_non_negative_and_below_beta_rho_d(jsd_long):
    assert (jsd_long.min_u >= 0).all()
    beta = jsd_long.max_ratio[0]
    assert beta > 50  # the start is far from rho_d, so the bound is a real constraint
    assert (jsd_long.max_ratio <= beta * (1 + 1e-12)).all()


def test_jsd_and_l1_fall_by_10x_towards_the_bimodal_target(jsd_long):
    assert jsd_long.jsd[-1] < jsd_long.jsd[0] / 10
    assert jsd_long.l1[-1] < jsd_long.l1[0] / 10
    assert jsd_long.jsd[-1] < 1e-6  # and in fact it converges


def test_rho_d_is_a_steady_state():
    sol = gf.solve_fokker_planck("bimodal", "bimodal", box=4.5, cells=200, t_end=1.0, dt=0.1)
    np.testing.assert_allclose(sol.snapshots[-1], sol.rho_d, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("div", ["jsd", "kl", "ns"])
def test_2d_flow_properties_hold(div):
    sol = gf.solve_fokker_planck("four2d", "normal:0,0:0.5", divergence=div, box=4.5, cells=48,
                                 t_end=1.0, dt=0.05)
    assert sol.mass_error < 1e-10
    assert (np.diff(sol.jsd[: 2]) < 0).all()
    assert (sol.min_u >= 0).all()
    assert (sol.max_ratio <= sol.max_ratio[0] * (1 + 1e-12)).all()
    if div == "jsd":
        assert (np.diff(sol.jsd) <= 1e-14).all()
    # each flow dissipates its own energy (the divergence it is the gradient flow of)
    assert (np.diff(sol.energy) <= 1e-12).all()


def test_stable_where_rho_d_is_tiny():
    # ring8 (std 0.02) on a coarse grid: rho_d underflows over most of the box. The solver
    # must stay finite and keep every structural property, not return garbage.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = gf.solve_fokker_planck("ring8", "normal:0,0:0.5", box=3, cells=48, t_end=0.5,
                                     dt=0.05)
    assert np.isfinite(sol.snapshots).all()
    assert sol.mass_error < 1e-10
    assert (np.diff(sol.jsd) <= 1e-14).all()
    assert (sol.min_u >= 0).all()


def test_unresolved_target_warns():
    with pytest.warns(UserWarning, match="does not resolve"):
        gf.solve_fokker_planck("ring8", "normal:0,0:0.5", box=3, cells=16, t_end=0.1, dt=0.1)


# ----------------------------------------------------------------- bad input
def test_box_too_small_names_the_mass_and_a_fix():
    with pytest.raises(GanflowError, match=r"holds only .* of the target's mass.*at least 4.5"):
        gf.solve_fokker_planck("bimodal", "normal:0:0.4", box=2.0, cells=50)


def test_init_that_is_not_a_density_on_the_box():
    with pytest.raises(GanflowError, match="init's mass"):
        gf.solve_fokker_planck("bimodal", "normal:10:0.4", box=4.5, cells=50)
    grid_shape = (50,)
    bad = np.ones(grid_shape)
    bad[3] = -1
    with pytest.raises(GanflowError, match="non-negative"):
        gf.solve_fokker_planck("bimodal", bad, box=4.5, cells=50)
    bad[3] = np.nan
    with pytest.raises(GanflowError, match="finite"):
        gf.solve_fokker_planck("bimodal", bad, box=4.5, cells=50)
    with pytest.raises(GanflowError, match="shape"):
        gf.solve_fokker_planck("bimodal", np.ones(49), box=4.5, cells=50)
    with pytest.raises(GanflowError, match="zero mass"):
        gf.solve_fokker_planck("bimodal", np.zeros(50), box=4.5, cells=50)


def test_other_bad_arguments():
    with pytest.raises(GanflowError, match="dimension 1 or 2, got dim=3"):
        gf.solve_fokker_planck("normal:0,0,0:1", "normal:0,0,0:1", box=5, cells=10)
    with pytest.raises(GanflowError, match="dt must be a positive number, got -0.1"):
        gf.solve_fokker_planck("bimodal", "normal:0:0.4", dt=-0.1)
    with pytest.raises(GanflowError, match="dimension 2 but the grid has dimension 1"):
        gf.solve_fokker_planck("bimodal", "four2d", box=5, cells=50)
    with pytest.raises(GanflowError, match="no snapshot at t=0.3"):
        gf.solve_fokker_planck("bimodal", "normal:0:0.4", cells=50, t_end=1, dt=0.1).u(0.3)


def test_newton_failure_is_reported_not_returned():
    # One Newton iteration cannot reach a 1e-300 residual on a nonlinear step: the solver
    # must raise with the time and step size, not hand back an unconverged state.
    with pytest.raises(NewtonConvergenceError, match=r"t=0 .*dt="):
        gf.solve_fokker_planck("bimodal", "normal:0:0.4", box=4.5, cells=50, t_end=1, dt=0.5,
                               newton_tol=1e-300, max_newton=1, max_halvings=2)


def test_adaptive_steps_land_on_save_times():
    sol = gf.solve_fokker_planck("bimodal", "normal:0:0.4", box=4.5, cells=100, t_end=3.0,
                                 dt=0.01, dt_max=1.0, save_at=[0.123, 2.0])
    np.testing.assert_allclose(sol.snapshot_times, [0, 0.123, 2.0, 3.0])
    assert sol.times[-1] == 3.0 and sol.dts.max() > 0.1  # the step did grow
    assert len(sol.times) == len(sol.jsd) == len(sol.mass) == sol.n_steps + 1
