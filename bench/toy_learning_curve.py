"""The learning curve of a toy training run: its grounding-probe rows as a Markdown table.

    python bench/toy_learning_curve.py W=src/editseg/assets/toy-shapes/training/train_log.jsonl [LABEL=LOG ...]

Columns: step, training minutes, validation loss at t = 1, and the probe (an observation, never a
loss): RAM/CAM point accuracy and full-method mIoU (all blocks and double-stream blocks only) and
the model's own first-step edit accuracy against its chance level.
"""

from __future__ import annotations

import json
import sys


def rows(path: str) -> list[dict]:
    with open(path) as fh:
        return [r for r in map(json.loads, fh) if "grounding" in r or "val_loss_t1" in r]


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    print("| run | step | minutes | val loss t=1 | RAM PA | CAM PA | mIoU | RAM PA double | CAM PA double | edit acc (chance) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        label, _, path = path.rpartition("=") if "=" in path else (path, "", path)
        val = None
        for r in rows(path):
            val = r.get("val_loss_t1", val)
            g = r.get("grounding")
            if not g:
                continue
            print(f"| {label} | {r['step']} | {r['elapsed_s'] / 60:.1f} | "
                  f"{'' if val is None else f'{val:.3f}'} | {g['ram_pa']:.3f} | {g['cam_pa']:.3f} | {g['miou']:.3f} | "
                  f"{g.get('ram_pa_double', float('nan')):.3f} | {g.get('cam_pa_double', float('nan')):.3f} | "
                  f"{g.get('edit_acc', float('nan')):.3f} ({g.get('edit_chance', float('nan')):.3f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
