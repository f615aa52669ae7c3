"""No module reaches into another app's private names.

A name with a leading underscore in ``apps.<app>`` (``apps.rag.services._QueryHooks`` as was) is used only
inside ``apps/<app>``; other apps, the engine and the tasks use the app's public API (for running one
question under a hold: ``apps.rag.question_runner``). import-linter checks modules, not names: this
checks names, by reading the source (imported names, and attributes of an imported app module).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE = ("apps", "workers")


def _owner(dotted: str) -> str:
    """The app (or engine package) a module belongs to: its first two dotted parts."""
    return ".".join(dotted.split(".")[:2])


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private_uses(source: str, path: str) -> list[str]:
    """Where the module at ``path`` (relative to the repository) uses a private name of another app:
    ``"line: module.name"`` for each."""
    here = _owner(".".join(Path(path).with_suffix("").parts))
    found: list[str] = []
    modules: dict[str, str] = {}  # local name -> the app module it stands for (not a class: Model._meta is fine)
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("apps."):
            module = node.module or ""
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__") and _owner(module) != here:
                    found.append(f"{node.lineno}: {module}.{alias.name}")
                elif _owner(module) != here and _is_module(f"{module}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("apps.") and alias.asname and _owner(alias.name) != here:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
            and node.attr.startswith("_") and not node.attr.startswith("__")
        ):
            found.append(f"{node.lineno}: {modules[node.value.id]}.{node.attr}")
    return found


def test_no_module_outside_an_app_uses_its_private_names():
    problems = []
    for top in CODE:
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            problems += [f"{relative}:{use}" for use in private_uses(path.read_text(encoding="utf-8"), relative)]
    assert problems == [], "private names used outside their app (make them public):\n" + "\n".join(problems)


def test_the_check_finds_a_private_import_and_attribute_from_another_app():
    source = (
        "from apps.rag.services import _QueryHooks, query_run_execute\n"
        "from apps.rag import services as rag\n"
        "import apps.costs.cost_model as cm\n"
        "rag._engine_config(run, endpoint)\n"
        "cm._seconds()\n"
        "rag.query_run_start()\n"
    )
    assert private_uses(source, "apps/bulk/services.py") == [
        "1: apps.rag.services._QueryHooks",
        "4: apps.rag.services._engine_config",
        "5: apps.costs.cost_model._seconds",
    ]
    assert private_uses(source, "workers/tasks/rag.py")[0] == "1: apps.rag.services._QueryHooks"


def test_the_check_lets_an_app_use_its_own_private_names():
    source = "from apps.rag.services import _answer\nfrom apps.rag import services\nservices._cancelled()\n"
    assert private_uses(source, "apps/rag/cascade.py") == []
