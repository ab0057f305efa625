"""Write README.md from nbs/index.ipynb without Quarto (where Quarto exists, `nbdev_readme` does the same job).

Executes the index notebook, drops `#| hide` cells, strips `#|` directives, renders Markdown with
`jupyter nbconvert`'s MarkdownExporter and points links relative to `nbs/` (chapters, figures) into `nbs/`.
`--check` exits 1 if README.md is not what this would write.
"""
import argparse
import re
import sys
from pathlib import Path

import nbformat
from execnb.nbio import nb2str, read_nb
from execnb.shell import CaptureShell
from nbconvert import MarkdownExporter
from nbdev.config import get_config

DIRECTIVE = re.compile(r"^\s*#\|.*$\n?", re.MULTILINE)


def readme_text(index: Path) -> str:
    "The README Markdown for the index notebook at `index`."
    nb = read_nb(index)
    CaptureShell(index).run_all(nb, exc_stop=True)
    nb = nbformat.reads(nb2str(nb), as_version=4)
    nb.cells = [cell for cell in nb.cells if not (cell.cell_type == "code" and re.search(r"^#\|\s*hide\s*$", cell.source, re.MULTILINE))]
    for cell in nb.cells:
        cell.source = DIRECTIVE.sub("", cell.source)
    body, _ = MarkdownExporter(exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(nb)
    body = re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"
    # links that are relative to nbs/ in the docs (a chapter, a figure) point into nbs/ from the repository root
    body = re.sub(r"\]\((?![a-z]+:|/|#)([^)\s]+)\)", r"](nbs/\1)", body)
    return "<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->\n\n" + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check that README.md is current")
    args = parser.parse_args()
    root = get_config().config_path
    text, readme = readme_text(root / "nbs" / "index.ipynb"), root / "README.md"
    if args.check:
        if not readme.exists() or readme.read_text(encoding="utf-8") != text:
            sys.exit("README.md is out of date with nbs/index.ipynb: run `python tools/make_readme.py`.")
        print("README.md is current.")
        return
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(readme)
    print(f"wrote {readme}")


if __name__ == "__main__":
    main()
