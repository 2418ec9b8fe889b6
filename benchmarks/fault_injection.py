r"""Fault injection (issue 14): SIGKILL a training run at every write it makes, resume it,
and check that nothing was lost.

A recording run lists every write event of a small run in order: each rename of an
atomic write (snapshot, checkpoint weights, ``state-<it>.json``, ``latest.json``,
``config.json``, ``summary.md``), each metrics append and each checkpoint deletion of the
pruning. Then, for every event and both sides of it ("before": the temp file is written
and fsynced but not renamed, or half of the metrics row is appended, or the file is not
yet deleted; "after": the event is done), a forked child trains the same run and kills
itself with SIGKILL there. The parent then resumes the run (or, when the kill came before
``config.json``, trains it again into the same folder) and compares it with the
uninterrupted run: every key of every metrics row but ``seconds``, and the final
generator, exactly; no temp or lock file may be left.

    python benchmarks/fault_injection.py                      # flow, every kill point
    python benchmarks/fault_injection.py --methods flow particles --json fault_injection.json

Prints a table (one row per kill point) and writes ``benchmarks/results/<json>``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import RESULTS, environment, measured_config, print_table

import ganflow._io as io_mod
import ganflow.training.logging as logging_mod
import ganflow.training.run as run_mod
from ganflow.training import TrainConfig, read_metrics, resume, sample_run, train

torch.set_num_threads(1)

TINY = dict(width=16, depth=2, batch_size=32, iterations=40, eval_every=10, eval_samples=200,
            w2_samples=100)


def _install(target: int | None, side: str | None, log: list[str]) -> None:
    """Count write events (in a child); SIGKILL at event ``target`` on ``side``."""
    real_replace, real_append, real_unlink = os.replace, io_mod.append_line_durable, Path.unlink

    def event(name: str, now: str) -> None:
        if now == "before":
            log.append(name)
        if target is not None and len(log) - 1 == target and now == side:
            os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst, *a, **k):
        event(f"rename {Path(dst).parent.name}/{Path(dst).name}", "before")
        real_replace(src, dst, *a, **k)
        event("", "after")

    def append(path, line):
        name = f"append {Path(path).name}"
        if target is not None and len(log) == target and side == "before":
            log.append(name)  # "before" an append: half of the row is written
            with open(path, "a") as fh:
                fh.write(line[: len(line) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        event(name, "before")
        real_append(path, line)
        event("", "after")

    def unlink(self, *a, **k):
        ck = self.name.startswith("state-")
        if ck:
            event(f"delete checkpoints/{self.name}", "before")
        real_unlink(self, *a, **k)
        if ck:
            event("", "after")

    os.replace = replace
    logging_mod.append_line_durable = append
    Path.unlink = unlink


def _child(cfg: TrainConfig, out: Path, target: int | None, side: str | None,
           log_file: Path | None = None) -> int:
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            log: list[str] = []
            _install(target, side, log)
            train(cfg, out=out, progress=False)
            if log_file is not None:
                log_file.write_text(json.dumps(log))
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def _rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(run_dir)]


def _check(ref: Path, run: Path) -> str:
    if _rows(ref) != _rows(run):
        return "metrics differ"
    if not torch.equal(sample_run(ref, 50, seed=1), sample_run(run, 50, seed=1)):
        return "weights differ"
    left = [p.name for p in run.rglob("*") if p.name.endswith(".tmp") or p.name == ".lock"]
    return f"left {left}" if left else "ok"


def run_method(method: str, work: Path) -> list[dict]:
    extra = {"particles": 500} if method == "particles" else {}
    cfg = measured_config(**TINY, method=method, **extra)
    ref = work / f"{method}-ref"
    train(cfg, out=ref, progress=False)
    log_file = work / f"{method}-events.json"
    status = _child(cfg, work / f"{method}-record", None, None, log_file)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3, status
    events = json.loads(log_file.read_text())
    rows = []
    for k, name in enumerate(events):
        for side in ("before", "after"):
            run = work / f"{method}-{k:03d}-{side}"
            t0 = time.perf_counter()
            status = _child(cfg, run, k, side)
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            row = {"method": method, "event": k, "side": side, "write": name,
                   "killed": killed}
            try:
                latest = json.loads((run / "checkpoints/latest.json").read_text())["iteration"]
            except (OSError, ValueError, KeyError):
                latest = None
            row["checkpoint"] = latest
            try:
                if (run / "config.json").exists():
                    res = resume(run, progress=False)
                    row["recovery"] = "resume"
                else:
                    res = train(cfg, out=run, progress=False)
                    row["recovery"] = "train again"
                row["outcome"] = _check(ref, run) if res.status == "finished" else res.status
            except Exception as exc:  # a fault this benchmark exists to find
                row["recovery"] = "failed"
                row["outcome"] = f"{type(exc).__name__}: {exc}"[:120]
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            print(f"{method:>9} {k:3d} {side:>6} {name:45s} ckpt {str(latest):>4} "
                  f"{row['recovery']:>11}: {row['outcome']}", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["flow"])
    ap.add_argument("--json", default="fault_injection.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # the checks write no figures: they are not under test and cost a second a run
        run_mod._end_of_run_figures = lambda s: None
        for method in args.methods:
            rows += run_method(method, Path(tmp))
    print_table(rows, ["method", "event", "side", "write", "killed", "checkpoint", "recovery",
                       "outcome"])
    bad = [r for r in rows if r["outcome"] != "ok" or not r["killed"]]
    print(f"\n{len(rows)} kill points, {len(rows) - len(bad)} resumed exactly, "
          f"{len(bad)} not")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / args.json
    io_mod.write_json_atomic(out, {"environment": environment(), "config": TINY,
                                   "rows": rows, "failures": len(bad)})
    print(f"wrote {out}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
