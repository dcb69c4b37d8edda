"""The package's shape, read from its source with ``ast`` (nothing is imported or run).

- The core never imports a wing: wings (``evaluation``, ``toy``, ``cli``, ``serve``, ``bulk``, ``train``)
  import the core, never the reverse; that includes imports inside functions, under
  ``TYPE_CHECKING`` and module paths named in strings (``importlib``, method registries).
- No private name crosses a module: ``from editseg.x import _y`` (or ``from .x import _y``) is
  refused anywhere in the package; dunder names such as ``__version__`` are public.
- No module grows past :data:`MAX_LINES` (the layout aims at ~500).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "editseg"
WINGS = ("editseg.evaluation", "editseg.toy", "editseg.cli", "editseg.serve", "editseg.bulk", "editseg.train")
MAX_LINES = 550


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def is_wing(name: str) -> bool:
    return any(name == wing or name.startswith(wing + ".") for wing in WINGS)


def imports(name: str, path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names]
            found.append((node.lineno, target, names))
            # ``from . import x`` imports the module ``package.x`` too
            found.extend((node.lineno, f"{target}.{n}", []) for n in names if f"{target}.{n}" in modules())
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("editseg."):
            found.append((node.lineno, node.value.split(":")[0], []))  # "editseg.x" / "editseg.x:Class" in strings
    return found


def test_the_walk_sees_the_package():
    names = modules()
    assert {"editseg.api", "editseg.methods.base", "editseg.backbones.base", "editseg.cli.main"} <= set(names)
    # the walk resolves relative imports: api imports the methods registry and the results
    targets = {t for _, t, _ in imports("editseg.api", names["editseg.api"])}
    assert {"editseg.methods.registry", "editseg.results"} <= targets


def test_the_core_imports_no_wing():
    offences = []
    for name, path in modules().items():
        if is_wing(name):
            continue
        for line, target, _ in imports(name, path):
            if is_wing(target):
                offences.append(f"{path.relative_to(PACKAGE_DIR.parent)}:{line}: core module {name} imports wing {target}")
    assert not offences, "\n".join(offences)


def test_no_private_name_is_imported_across_modules():
    offences = []
    for name, path in modules().items():
        for line, target, names in imports(name, path):
            if not target.startswith("editseg"):
                continue
            private = [n for n in names if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]
            if private:
                offences.append(f"{path.relative_to(PACKAGE_DIR.parent)}:{line}: imports {', '.join(private)} from {target}")
    assert not offences, "\n".join(offences)


def test_the_rules_catch_what_they_forbid(tmp_path):
    """The checks above fail on a core module importing a wing or a private name (so they can fail)."""
    bad = tmp_path / "editseg"
    (bad / "evaluation").mkdir(parents=True)
    (bad / "__init__.py").write_text("")
    (bad / "evaluation" / "__init__.py").write_text("")
    (bad / "evaluation" / "runner.py").write_text("def _helper():\n    pass\n")
    (bad / "api.py").write_text("def f():\n    from .evaluation.runner import _helper\n")
    globals()["PACKAGE_DIR"], saved = bad, PACKAGE_DIR
    try:
        with pytest.raises(AssertionError, match="core module editseg.api imports wing editseg.evaluation.runner"):
            test_the_core_imports_no_wing()
        with pytest.raises(AssertionError, match="imports _helper from editseg.evaluation.runner"):
            test_no_private_name_is_imported_across_modules()
    finally:
        globals()["PACKAGE_DIR"] = saved


def test_no_module_is_over_the_line_limit():
    long = {str(p.relative_to(PACKAGE_DIR.parent)): n for p in modules().values() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these modules (aim: ~500 lines): {long}"
