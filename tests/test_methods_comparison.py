"""The three zero-shot methods evaluated on the same data, then one comparison table (issue 10)."""

from __future__ import annotations

import json

from editseg.cli.main import main
from editseg.data.shapes import save_samples_as_manifest, shapes_benchmark

RUNS = {
    "early-grounding": ["--model", "tiny-random-flux2"],
    "refam": ["--model", "tiny-random-flux1"],
    "ref-diff": ["--model", "tiny-random-sd15"],
}


def test_three_methods_on_the_same_data_make_one_table(tmp_path, capsys):
    manifest = save_samples_as_manifest(shapes_benchmark(2), tmp_path / "shapes")
    for method, model in RUNS.items():
        code = main(["eval", "--dataset", "manifest", "--manifest", str(manifest), "--method", method, *model,
                     "--device", "cpu", "--out", str(tmp_path / method), "--no-progress"])
        assert code == 0, capsys.readouterr().err
    summaries = {m: json.loads((tmp_path / m / "summary.json").read_text()) for m in RUNS}
    assert {s["settings"]["method"] for s in summaries.values()} == set(RUNS)  # every header names its method
    assert len({tuple(s["benchmark"]) for s in summaries.values()}) == 1  # one column: the same data
    assert all(s["num_samples"] == 2 for s in summaries.values())

    capsys.readouterr()
    table_path = tmp_path / "comparison.md"
    assert main(["eval-table", *(str(tmp_path / m) for m in RUNS), "--out", str(table_path)]) == 0
    rows = [line for line in table_path.read_text().splitlines() if "| ours |" in line]
    assert len(rows) == 3, rows
    for method, summary in summaries.items():
        oiou = summary["metrics"]["oIoU"]
        matching = [r for r in rows if (method in r) or (method == "early-grounding" and "tiny-random-flux2" in r)]
        assert len(matching) == 1, (method, rows)
        assert f"{oiou:.2f}" in matching[0]
