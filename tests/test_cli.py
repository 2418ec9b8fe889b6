"""The command line: outputs, JSON contents, and clear errors with non-zero exits."""

import json

import pytest
from typer.testing import CliRunner

from ganflow.cli import app

runner = CliRunner()


def test_pde_writes_json_and_plot(tmp_path):
    out, png = tmp_path / "pde.json", tmp_path / "pde.png"
    res = runner.invoke(app, ["pde", "--cells", "100", "--t-end", "2", "--json", str(out),
                              "--plot", str(png)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["times"][0] == 0 and abs(data["times"][-1] - 2) < 1e-12
    n = len(data["times"])
    assert len(data["jsd"]) == len(data["l1"]) == len(data["mass"]) == n
    assert all(b <= a + 1e-14 for a, b in zip(data["jsd"], data["jsd"][1:], strict=False))
    assert png.stat().st_size > 10_000
    assert "JSD" in res.output


def test_pde_kl_2d_from_a_json_target(tmp_path):
    target = tmp_path / "t.json"
    target.write_text(json.dumps({"weights": [0.5, 0.5], "means": [[-1, 0], [1, 0]],
                                  "stds": [0.5, 0.5]}))
    out = tmp_path / "o.json"
    res = runner.invoke(app, ["pde", "--target", str(target), "--init", "normal:0,0:0.5",
                              "--divergence", "kl", "--cells", "32", "--t-end", "0.5",
                              "--box", "4", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["dim"] == 2


def test_particles_reports_gap_to_pde(tmp_path):
    out = tmp_path / "p.json"
    res = runner.invoke(app, ["particles", "--n", "300", "--t-end", "0.1", "--dt", "0.01",
                              "--cells", "100", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert len(data["l1"]) == len(data["times"]) == 5
    assert all(0 < g < 2 for g in data["l1"])


@pytest.mark.parametrize(("args", "message"), [
    (["pde", "--target", "nosuch"], "unknown target 'nosuch'"),
    (["pde", "--box", "1"], "holds only"),
    (["pde", "--divergence", "hellinger"], "unknown divergence"),
    (["pde", "--dt", "-1"], "dt must be a positive number"),
    (["particles", "--method", "rk4"], "method must be"),
    (["particles", "--bandwidth", "wide"], "bandwidth"),
])
def test_bad_input_exits_non_zero_with_a_message(args, message, tmp_path):
    out = tmp_path / "never.json"
    res = runner.invoke(app, [*args, "--json", str(out)])
    assert res.exit_code != 0
    assert message in res.output
    assert not out.exists()


def test_version_prints_the_package_version():
    import ganflow

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"ganflow {ganflow.__version__}"
