"""The shapes comparison table is assembled from ordinary eval summaries: cells are the summaries'
metrics, rows that need weights show their command, ceilings close the table."""

from __future__ import annotations

import json

import pytest

from editseg.evaluation.records import EvaluationError
from editseg.evaluation.shapes_table import SHAPES_ROWS, ShapesRow, comparison_table, eval_argv, read_summary
from editseg.evaluation.summary import summarize, write_summary


def _summary(tier: str, ious: list[tuple[int, int]], hits: list[bool], method: str = "early-grounding", **config):
    records = [{"id": str(i), "intersection": a, "union": b, "point_hit": h} for i, ((a, b), h) in enumerate(zip(ious, hits))]
    settings = {"model": "toy-shapes", "method": method, "config": config, "dataset": "shapes", "split": tier,
                "benchmark": ["shapes", tier]}
    return summarize(settings, records)


def test_cells_are_the_summaries_metrics_and_weights_rows_show_commands(tmp_path):
    rows = [ShapesRow("eg", "early-grounding", ()), ShapesRow("rlf", "rlfseg aos", ("--method", "rlfseg")),
            ShapesRow("refam", "refam", ("--method", "refam"), "FLUX.1 [dev]")]
    # basic: IoUs 1/2, 3/4 -> mIoU 62.5, oIoU 4/6 = 66.7, Pr@0.5 100 (IoU >= 0.5, exactly), PA 50
    basic = _summary("basic", [(1, 2), (3, 4)], [True, False])
    full = _summary("full", [(0, 5), (5, 5)], [False, False])
    rlf = _summary("basic", [(2, 2), (1, 4)], [True, True], method="rlfseg", sampler="aos", lora_sha256="abc")
    write_summary(basic, tmp_path / "eg-basic" / "summary.json")
    assert read_summary(tmp_path / "eg-basic") == json.loads((tmp_path / "eg-basic" / "summary.json").read_text())
    assert read_summary(tmp_path / "nothing") is None
    summaries = {("eg", "basic"): basic, ("eg", "full"): full, ("rlf", "basic"): rlf}
    ceilings = {"basic": [("ceiling (a)", 0.902), ("ceiling (b)", 0.883)], "full": [("ceiling (a)", 0.9), ("ceiling (b)", 0.88)]}
    text = comparison_table(rows, summaries, ceilings, n=2, world_seed=5, out_root="runs/x", chance={"basic": 0.076, "full": 0.079})
    lines = text.splitlines()
    assert lines[0].startswith("| method | basic n | basic mIoU | basic oIoU | basic Pr@0.5 | basic PA | full n | full mIoU")
    cells = {line.split(" | ")[0][2:]: [c.strip(" |") for c in line.split(" | ")[1:]] for line in lines if line.startswith("| ")}
    assert cells["early-grounding"] == ["2", "62.5", "66.7", "100.0", "50.0", "2", "50.0", "50.0", "50.0", "0.0"]
    assert cells["rlfseg aos"][:5] == ["2", "62.5", "50.0", "50.0", "100.0"] and cells["rlfseg aos"][6:] == ["not run"] * 4
    assert cells["refam"][:2] == ["–", "needs weights"]
    assert cells["ceiling (a)"] == ["2", "90.2", "–", "–", "–", "2", "90.0", "–", "–", "–"]
    assert ("`editseg eval --dataset shapes --tier basic --world-seed 5 --limit 2 --method refam --out runs/x/refam-basic`"
            in text)
    assert text.count("rlfseg rows: LoRA sha256 abc on toy-shapes") == 1 and "7.6 basic, 7.9 full" in text


def test_partial_runs_are_listed_and_other_data_refused():
    rows = [ShapesRow("eg", "early-grounding", ())]
    summary = _summary("basic", [(1, 2)], [True])
    text = comparison_table(rows, {("eg", "basic"): summary}, {}, n=3, world_seed=5)
    assert "rerun with --limit 3 to complete them: eg basic: 1." in text
    with pytest.raises(EvaluationError, match="expected at most 3 on shapes full"):
        comparison_table(rows, {("eg", "full"): summary}, {}, n=3, world_seed=5)  # a basic-tier summary in the full slot


def test_eval_argv_parses_as_an_eval_command():
    from editseg.cli.main import build_parser

    for row in SHAPES_ROWS:
        args = build_parser().parse_args(eval_argv(row, "full", "runs/r", 10, 271828))
        assert (args.command, args.dataset, args.tier, args.limit, args.world_seed) == ("eval", "shapes", "full", 10, 271828)
        assert args.out == f"runs/r/{row.key}-full" and args.method == (row.options[1] if row.options else "early-grounding")
