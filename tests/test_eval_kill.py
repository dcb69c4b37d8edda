"""``editseg eval`` killed at several points (real subprocesses, SIGKILL and SIGINT), then resumed:
no sample lost, none counted twice, every record equal to an uninterrupted run's (issue 13 §2)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from editseg.evaluation.runner import read_records

SAMPLES = 12
SRC = Path(__file__).resolve().parent.parent / "src"


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "editseg.cli", "eval", "--dataset", "shapes", "--limit", str(SAMPLES),
            "--out", str(out), "--no-progress", "--batch-size", "1", "--device", "cpu"]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _run_and_kill(out: Path, sig: int, *, after_lines: int | None = None, after_seconds: float | None = None) -> int | None:
    """Start an eval; send ``sig`` once the records file has ``after_lines`` lines (or after
    ``after_seconds``); return its exit status (None when it finished before the kill point)."""
    process = subprocess.Popen(_command(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = out / "records.jsonl"
    started = time.monotonic()
    try:
        while process.poll() is None:
            if after_lines is not None and _lines(records) >= after_lines:
                break
            if after_seconds is not None and time.monotonic() - started >= after_seconds:
                break
            if time.monotonic() - started > 240:
                pytest.fail("eval subprocess made no progress in 240 s")
            time.sleep(0.005)
        if process.poll() is not None:
            return None
        process.send_signal(sig)
        process.wait(timeout=120)
        return process.returncode
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def test_eval_killed_at_random_points_resumes_without_loss_or_double_counting(tmp_path):
    out = tmp_path / "run"
    records = out / "records.jsonl"
    rng = random.Random(13)
    points = [  # (signal, kill point): during start-up, right after the header, mid-run twice, late
        (signal.SIGKILL, {"after_seconds": rng.uniform(0.3, 1.5)}),
        (signal.SIGKILL, {"after_lines": 1}),
        (signal.SIGINT, {"after_lines": 1 + rng.randint(1, SAMPLES // 3)}),
        (signal.SIGKILL, {"after_lines": 1 + rng.randint(SAMPLES // 3, 2 * SAMPLES // 3)}),
        # late, but at least 3 samples before the end: a kill sent as the run finishes (a busy machine can
        # delay the watcher by more than the small default model needs for one sample) would find it exiting
        (signal.SIGINT, {"after_lines": 1 + rng.randint(2 * SAMPLES // 3, SAMPLES - 3)}),
    ]
    seen_counts, killed = [], 0
    for sig, point in points:
        code = _run_and_kill(out, sig, **point)
        if code is not None:
            killed += 1
            assert code in (-signal.SIGKILL, 130, -signal.SIGINT), code
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a cut last line is dropped with a warning
            seen_counts.append(len(read_records(records)[1]))  # raises on a duplicate id
    assert seen_counts == sorted(seen_counts), seen_counts  # every recorded sample survives later kills
    assert killed >= 4 and seen_counts[-1] < SAMPLES, (killed, seen_counts)  # the kills landed mid-run

    final = subprocess.run(_command(out), env=_env(), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    header, found = read_records(records)
    ids = [r["id"] for r in found]
    assert len(ids) == len(set(ids)) == SAMPLES  # zero lost, zero double-counted
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_samples"] == SAMPLES and summary["run"]["complete"]
    assert summary["failed"]["count"] == 0

    # Every record equals the uninterrupted run's (same model, same samples: deterministic).
    from editseg import Segmenter
    from editseg.data.shapes_dataset import shapes_benchmark_dataset
    from editseg.evaluation.runner import evaluate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segmenter = Segmenter.from_pretrained("toy-shapes", device="cpu", batch_size=1)
    reference = evaluate(segmenter, shapes_benchmark_dataset(SAMPLES), tmp_path / "ref" / "records.jsonl", progress=False)
    expected = {r["id"]: r for r in read_records(tmp_path / "ref" / "records.jsonl")[1]}
    assert set(expected) == set(ids)
    for record in found:
        assert (record["intersection"], record["union"], record["point_hit"]) == (
            expected[record["id"]]["intersection"], expected[record["id"]]["union"], expected[record["id"]]["point_hit"]
        ), record["id"]
    assert summary["metrics"] == reference["metrics"]


def test_ctrl_c_stops_an_evaluation_at_the_next_sample_boundary():
    """The first SIGINT only marks the run (so it cannot be swallowed mid-sample), ``check`` raises at
    the boundary, a second SIGINT raises at once, and the previous handler comes back."""
    from editseg.evaluation.records import InterruptBetweenSamples

    before = signal.getsignal(signal.SIGINT)
    with InterruptBetweenSamples() as interrupt:
        interrupt.check()  # nothing pending
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is before


def test_deferred_interrupt_waits_for_every_ctrl_c_and_restores_an_unknown_handler(monkeypatch):
    """The writers' variant holds every SIGINT until ``check``; when the previous handler was not
    installed from Python (``signal.signal`` returned None), Python's own Ctrl-C handler comes back
    instead of the deferring one staying installed."""
    from editseg.interrupts import DeferredInterrupt

    before = signal.getsignal(signal.SIGINT)
    try:
        with DeferredInterrupt() as interrupt:
            for _ in range(2):  # a second Ctrl-C waits too
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
            assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        assert signal.getsignal(signal.SIGINT) is before

        real_signal = signal.signal
        calls = []

        def from_c_code(signum, handler):
            calls.append(handler)
            previous = real_signal(signum, handler)
            return None if len(calls) == 1 else previous  # the first call reports "not set from Python"

        monkeypatch.setattr(signal, "signal", from_c_code)
        with DeferredInterrupt():
            pass
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
