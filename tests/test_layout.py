"""The library's one-way import rule (DESIGN.md): a module imports only from modules whose notebooks come earlier in the
book's numbering (`00_rope` < `00a_utils` < `01_model` < ... < `13_cli`), so the import graph has no cycle and a
chapter never reaches forward. Every import counts, the ones inside functions too: a function-local import is a way to
load a heavy library late, never a way around the rule. The command lines (`13_cli`) come last, so the commands they
dispatch to are all earlier.
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "nomic_embed"


def notebook_of(module: Path) -> str:
    "The notebook a module is exported from, read from the header nbdev writes."
    header = re.search(r"File to edit: \.\./nbs/(\S+)\.ipynb", module.read_text(encoding="utf-8"))
    assert header, f"{module.name} has no nbdev header: every module is exported from a notebook"
    return header[1]


def imported_modules(module: Path) -> set[str]:
    "The nomic_embed modules `module` imports, anywhere in it."
    found = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .utils import x
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import utils
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("nomic_embed."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("nomic_embed."))
    return found - {module.stem}


MODULES = {path.stem: path for path in sorted(LIBRARY.glob("*.py")) if not path.name.startswith("_")}
NOTEBOOKS = {name: notebook_of(path) for name, path in MODULES.items()}


def test_every_module_comes_from_its_own_notebook():
    by_notebook = {}
    for name, notebook in NOTEBOOKS.items():
        by_notebook.setdefault(notebook, []).append(name)
    shared = {notebook: names for notebook, names in by_notebook.items() if len(names) > 1}
    assert not shared, f"one notebook, one module: {shared}"


def test_imports_go_only_to_earlier_notebooks():
    "No upward import and so no cycle: each import of a nomic_embed module names a module of an earlier notebook."
    upward = [f"{name} ({NOTEBOOKS[name]}) imports {target} ({NOTEBOOKS[target]})"
              for name, path in MODULES.items() for target in sorted(imported_modules(path))
              if target in NOTEBOOKS and NOTEBOOKS[target] >= NOTEBOOKS[name]]
    unknown = [f"{name} imports nomic_embed.{target}, which does not exist"
               for name, path in MODULES.items() for target in imported_modules(path) if target not in NOTEBOOKS]
    assert not unknown, unknown
    assert not upward, "imports that reach forward in the book (move the helper to the earlier chapter): " + "; ".join(upward)


def test_the_command_lines_come_last():
    "cli imports the chapters that do the work; nothing imports cli."
    assert NOTEBOOKS["cli"] == max(NOTEBOOKS.values())
    users = [name for name, path in MODULES.items() if "cli" in imported_modules(path)]
    assert not users, f"{users} import the command lines"
