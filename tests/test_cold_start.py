"""Issue 13 §3: the light commands never import torch (nor diffusers, transformers, peft).

``editseg --version``, ``--help``, ``models``, argument errors and the input checks of
``segment`` (bad path, bad image, bad expression, bad option, unwritable ``--out``) must answer
without the seconds-long torch import; ``import editseg`` alone must not import torch either.
Each case runs in one fresh interpreter (the test process has long imported torch), one after the
other, reading ``sys.modules`` after each: the first case that imports a heavy module is named.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate")
NOT_EVEN = ("numpy", "PIL")  # --version, --help and models need neither

CHILD = r"""
import contextlib, io, json, sys
HEAVY = {heavy!r}
report = {{}}
import editseg
report["import editseg"] = {{"rc": 0, "modules": [m for m in HEAVY if m in sys.modules], "stderr": ""}}
from editseg.cli.main import main
for name, argv in {cases!r}:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as stop:
            rc = stop.code
    report[name] = {{"rc": rc, "modules": [m for m in HEAVY if m in sys.modules], "stderr": err.getvalue()}}
print(json.dumps(report))
"""


def run_cases(cases: list[tuple[str, list[str]]], tmp_path: Path) -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    code = CHILD.format(heavy=HEAVY + NOT_EVEN, cases=cases)
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_light_commands_and_input_errors_import_no_torch(tmp_path):
    image = tmp_path / "scene.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(image)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    light = [
        ("--version", ["--version"]),
        ("--help", ["--help"]),
        ("models", ["models"]),
        ("segment --help", ["segment", "--help"]),
        ("no command", []),
        ("unknown command", ["segmnt"]),
        ("unknown option", ["segment", str(image), "the red circle", "--no-such-option"]),
        ("bad choice", ["segment", str(image), "the red circle", "--mode", "banana"]),
        ("unknown method", ["segment", str(image), "the red circle", "--method", "nope"]),
    ]
    checks = [
        ("missing image", ["segment", str(tmp_path / "missing.png"), "the red circle", "--out", str(tmp_path / "o1")]),
        ("not an image", ["segment", str(not_an_image), "the red circle", "--out", str(tmp_path / "o2")]),
        ("empty expression", ["segment", str(image), "   ", "--out", str(tmp_path / "o3")]),
        ("no expression", ["segment", str(image), "--out", str(tmp_path / "o4")]),
        ("bad --max-side", ["segment", str(image), "the red circle", "--max-side", "0", "--out", str(tmp_path / "o5")]),
        ("bad --attention-blocks", ["segment", str(image), "the red circle", "--attention-blocks", "x-y", "--out", str(tmp_path / "o6")]),
        ("--out is a file", ["segment", str(image), "the red circle", "--out", str(a_file)]),
    ]
    report = run_cases(light + checks, tmp_path)

    assert report["import editseg"]["modules"] == [], "import editseg imported " + str(report["import editseg"]["modules"])
    expected_rc = {"--version": 0, "--help": 0, "models": 0, "segment --help": 0}
    for name, _ in light + checks:
        outcome = report[name]
        assert outcome["rc"] == expected_rc.get(name, 2), (name, outcome)
        heavy = [m for m in outcome["modules"] if m in HEAVY]
        assert heavy == [], f"{name!r} imported {heavy} (and every case after it)"
        if name in dict(light):
            assert outcome["modules"] == [], f"{name!r} imported {outcome['modules']}"
    for name, _ in checks:  # the input checks answer with one clean line, not a usage dump
        assert "editseg: error:" in report[name]["stderr"] and "Traceback" not in report[name]["stderr"], (name, report[name])


def test_models_lists_the_catalog_without_importing_families(tmp_path):
    from editseg.catalog import FAMILIES, known_models

    # every family module reads its names from the catalog: one source for `editseg models` and the loader
    import importlib

    for family in FAMILIES:
        module = importlib.import_module(family.module)
        assert dict(module.ALIASES) == dict(family.aliases) and module.PIPELINE_CLASS_NAMES == family.pipeline_class_names
    names = known_models()
    assert {"toy-shapes", "tiny-random-flux2", "flux2-klein-4b", "flux1-kontext", "qwen-image-edit", "step1x-edit"} <= set(names)
