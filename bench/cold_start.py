"""Cold-start cost of the ``editseg`` commands, as fresh processes, against bare Python and torch.

Runs each command N times (interleaved, so background load hits all alike) and prints, per
command, the minimum wall time and the minimum CPU time (user + system of the child: far
steadier than wall time on a shared machine), the ratio of each to ``python -c "import torch"``,
and whether the process imported torch / diffusers / transformers / peft / ``torch._dynamo``
(read from ``sys.modules`` at exit). ``--importtime`` adds the heaviest modules by self import
time (``python -X importtime``), one run per command. Prints a Markdown table for
docs/benchmarks.md.

    python bench/cold_start.py --runs 5
    python bench/cold_start.py --runs 1 --importtime --only segment

``(peft not installed)`` runs the same call with ``sys.modules["peft"] = None`` set first, which
is what diffusers and transformers see in a venv without peft (the ``[train]``/``[dev]`` extras).
The segment call runs on a 64x64 shapes scene written by ``editseg shapes`` (default model
toy-shapes, CPU, ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "peft", "torch._dynamo", "accelerate", "sympy", "scipy", "matplotlib")
# Runs the CLI in-process, then reports which heavy modules were imported (stderr, last line).
CLI = (
    "import sys, atexit\n"
    "for name in {hidden!r}: sys.modules[name] = None  # as if not installed: find_spec() is None, import fails\n"
    "atexit.register(lambda: print('MODULES ' + ','.join(m for m in {heavy!r} if sys.modules.get(m) is not None), file=sys.stderr))\n"
    "from editseg.cli.main import main\n"
    "sys.argv[0] = 'editseg'\n"
    "code = main(sys.argv[1:])\n"
    "sys.exit(code)\n"
)


def commands(scene: Path, out: Path) -> dict[str, list[str]]:
    """Name → argv after ``python``."""
    cli = ["-c", CLI.format(heavy=HEAVY, hidden=())]
    without_peft = ["-c", CLI.format(heavy=HEAVY, hidden=("peft",))]
    return {
        "python -c pass": ["-c", "pass"],
        "python -c 'import torch'": ["-c", "import torch"],
        "editseg --version": cli + ["--version"],
        "editseg --help": cli + ["--help"],
        "editseg models": cli + ["models"],
        "editseg segment (bad path)": cli + ["segment", str(scene.parent / "missing.png"), "the red circle", "--out", str(out)],
        "editseg segment": cli + ["segment", str(scene), "the red circle", "--out", str(out)],
        # a user venv without the [train]/[dev] extras: diffusers then skips `import peft` (and the
        # transformers top-level import peft makes early)
        "editseg segment (peft not installed)": without_peft + ["segment", str(scene), "the red circle", "--out", str(out)],
    }


def run_once(argv: list[str], env: dict[str, str], importtime: bool = False) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, its stderr) for one fresh ``python [-X importtime] argv`` process."""
    args = [sys.executable] + (["-X", "importtime"] if importtime else []) + argv
    start = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)  # the child's own rusage, not all children's
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime, stderr


def heavy_modules(stderr: str) -> str:
    found = re.findall(r"^MODULES (.*)$", stderr, flags=re.M)
    return found[-1] if found else ""


def importtime_top(stderr: str, count: int) -> tuple[float, list[tuple[float, str]], list[tuple[str, float]]]:
    """(total self s, heaviest modules by self time, self time per top-level package)."""
    rows = [(int(m[1]) / 1e6, m[2].strip()) for m in re.finditer(r"import time:\s+(\d+) \|\s+\d+ \|(.*)$", stderr, flags=re.M)]
    packages: collections.Counter[str] = collections.Counter()
    for seconds, name in rows:
        packages[name.split(".")[0]] += seconds
    return sum(s for s, _ in rows), sorted(rows, reverse=True)[:count], packages.most_common(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per command (min is reported)")
    parser.add_argument("--only", default=None, help="only commands whose name contains this")
    parser.add_argument("--importtime", action="store_true", help="also one -X importtime run per command: top modules")
    parser.add_argument("--top", type=int, default=8, help="modules / packages listed per command with --importtime")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="editseg-cold-") as tmp:
        subprocess.run([sys.executable, "-m", "editseg.cli", "shapes", "--out", tmp, "--count", "1"], env=env, check=True, capture_output=True)
        scene = next(Path(tmp, "images").glob("*.png"))
        table = {name: argv for name, argv in commands(scene, Path(tmp) / "out").items() if args.only is None or args.only in name or "import torch" in name}
        walls: dict[str, list[float]] = {name: [] for name in table}
        cpus: dict[str, list[float]] = {name: [] for name in table}
        imported: dict[str, str] = {}
        for _ in range(args.runs):
            for name, argv in table.items():
                wall, cpu, stderr = run_once(argv, env)
                walls[name].append(wall)
                cpus[name].append(cpu)
                imported[name] = heavy_modules(stderr)
        torch_wall, torch_cpu = min(walls["python -c 'import torch'"]), min(cpus["python -c 'import torch'"])
        print(f"min of {args.runs} runs; python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.1f}\n")
        print("| command | wall s (min) | CPU s (min) | wall / import torch | CPU / import torch | heavy modules imported |")
        print("|---|---|---|---|---|---|")
        for name in table:
            wall, cpu = min(walls[name]), min(cpus[name])
            print(f"| `{name}` | {wall:.2f} | {cpu:.2f} | {wall / torch_wall:.2f} | {cpu / torch_cpu:.2f} | {imported[name] or '-'} |")
        if args.importtime:
            for name, argv in table.items():
                _, _, stderr = run_once(argv, env, importtime=True)
                total, top, packages = importtime_top(stderr, args.top)
                print(f"\n`{name}`: {total:.2f} s of imports (self times summed)")
                print("  packages: " + ", ".join(f"{package} {seconds:.2f}" for package, seconds in packages))
                print("  modules:  " + ", ".join(f"{module} {seconds:.3f}" for seconds, module in top))


if __name__ == "__main__":
    main()
