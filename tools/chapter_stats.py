"""How much of each chapter's code the reader sees: per notebook, the exported cells, their length, the definitions
shown on the page (`#| exports`) and hidden from it (`#| export`, `#| exporti`), and the shown lines too wide for it.

    python tools/chapter_stats.py                 # the working tree's notebooks, as a Markdown table
    python tools/chapter_stats.py --rev main      # the notebooks as committed at a revision (for a before/after)

Lines of a cell are counted without its `#|` directives and trailing blank lines. A definition is a top-level `def`
or `class`. "wide" counts shown code lines over 100 columns (they are clipped or scroll on the page); "API" is the
number of show_doc calls under an end-of-chapter heading named API.
"""
import argparse
import json
import re
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIRECTIVE = re.compile(r"^\s*#\|\s*([\w-]+)")
DEFINITION = re.compile(r"^(?:async\s+)?(?:def|class)\s+(\w+)", re.MULTILINE)
WIDTH = 100


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def directives(cell: dict) -> set[str]:
    "The `#|` directive names at the top of a code cell."
    return {m[1] for line in source(cell).splitlines() if (m := DIRECTIVE.match(line))}


def code_lines(cell: dict) -> list[str]:
    "The cell's lines without directives and without trailing blank lines."
    lines = [line for line in source(cell).splitlines() if not DIRECTIVE.match(line)]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def chapter_stats(nb: dict) -> dict:
    "Exported cells, lines per exported cell, shown/hidden definitions, wide shown lines and API-dump show_docs."
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    exported = [c for c in code if directives(c) & {"export", "exports", "exporti"}]
    shown = [c for c in exported if "exports" in directives(c)]
    hidden = [c for c in exported if c not in shown]
    sizes = [len(code_lines(c)) for c in exported]
    visible = [c for c in code if not directives(c) & {"export", "exporti", "hide", "echo"}]  # cells shown on the page
    wide = sum(len(line) > WIDTH for c in visible for line in code_lines(c))
    api, in_api = 0, False
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown" and (m := re.search(r"^(#+)\s+(.*)$", source(cell), re.MULTILINE)):
            in_api = m[2].strip().lower() in {"api", "the api", "api reference"}
        elif in_api and cell["cell_type"] == "code" and "show_doc(" in source(cell):
            api += source(cell).count("show_doc(")
    return {"exported": len(exported), "shown cells": len(shown),
            "median": statistics.median(sizes) if sizes else 0, "max": max(sizes, default=0),
            "shown defs": sum(len(DEFINITION.findall("\n".join(code_lines(c)))) for c in shown),
            "hidden defs": sum(len(DEFINITION.findall("\n".join(code_lines(c)))) for c in hidden),
            "wide": wide, "API": api, "sizes": sizes}


def notebooks(rev: str | None) -> dict[str, dict]:
    "name -> notebook JSON, from the working tree or from a git revision."
    if rev is None:
        return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((ROOT / "nbs").glob("*.ipynb"))}
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "nbs/"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return {Path(n).stem: json.loads(subprocess.run(["git", "show", f"{rev}:{n}"], cwd=ROOT, capture_output=True,
                                                    text=True, check=True).stdout)
            for n in sorted(names) if n.endswith(".ipynb")}


def table(stats: dict[str, dict]) -> str:
    columns = ["exported", "shown cells", "median", "max", "shown defs", "hidden defs", "wide", "API"]
    rows = ["| chapter | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    rows += [f"| {name} | " + " | ".join(f"{s[c]:g}" for c in columns) + " |" for name, s in stats.items()]
    sizes = [n for s in stats.values() for n in s["sizes"]]
    total = {c: sum(s[c] for s in stats.values()) for c in columns if c not in ("median", "max")}
    total |= {"median": statistics.median(sizes) if sizes else 0, "max": max(sizes, default=0)}
    rows.append("| **all** | " + " | ".join(f"{total[c]:g}" for c in columns) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description="Per-chapter counts of exported cells and shown code.")
    parser.add_argument("--rev", default=None, help="a git revision to read the notebooks from (default: the working tree)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = parser.parse_args()
    stats = {name: chapter_stats(nb) for name, nb in notebooks(args.rev).items() if name != "index"}
    if args.json:
        print(json.dumps({k: {c: v for c, v in s.items() if c != "sizes"} for k, s in stats.items()}, indent=1))
    else:
        print(table(stats))


if __name__ == "__main__":
    main()
