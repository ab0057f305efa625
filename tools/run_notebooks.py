"""Execute notebooks in place so their stored outputs (plots, tables) are current.

nbdev's docs (Quarto, or tools/preview_docs.sh here) show the outputs stored in each notebook, so run
this after changing a chapter:  python tools/run_notebooks.py nbs/00_rope.ipynb [--flags slow]
Cells marked with a flag from settings.ini's tst_flags (e.g. `#| slow`) run only when that flag is
given; `#| eval: false` cells never run. A failing cell stops the run and leaves the notebook unchanged.

Stored outputs are what readers of the docs see, so progress bars are switched off while the notebooks run
(tqdm, transformers and huggingface_hub read these environment variables), and every output that shows a
warning, an error or a path of this machine is listed at the end: fix the cell, then run it again.
"""
import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from nbdev.config import get_config
from nbdev.process import extract_directives


QUIET = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
         "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1"}
MACHINE_PATH = re.compile(r"(/work/|/tmp/|/home/|/root/|/private/var/|\.venv/|site-packages/)")


def output_problems(nb) -> list[str]:
    "Cells whose stored outputs show a warning or other stderr text, an error, or a path of this machine."
    problems = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", "")) + "".join(
                "".join(value) if isinstance(value, list) else str(value)
                for key, value in output.get("data", {}).items() if key.startswith("text/"))
            if output.get("output_type") == "error":
                problems.append(f"cell {index}: an error ({output.get('ename')})")
            elif output.get("output_type") == "stream" and output.get("name") == "stderr":
                problems.append(f"cell {index}: stderr output {text.strip()[:80]!r}")
            if match := MACHINE_PATH.search(text):
                problems.append(f"cell {index}: a machine path {text[max(match.start() - 30, 0):match.end() + 30]!r}")
    return problems


def skipped(cell, skip_flags: set[str]) -> bool:
    "True when `cell` must not run: `#| eval: false`, or a test flag that was not asked for."
    if cell.cell_type != "code":
        return False
    directives = extract_directives(cell, remove=False)
    if directives.get("eval:", [""])[0].lower() == "false":
        return True
    return any(flag in directives for flag in skip_flags)


def run_notebook(path: Path, flags: set[str]) -> float:
    "Execute every runnable cell of `path` with the notebook's folder as working directory; write outputs back atomically."
    all_flags = set(get_config().tst_flags.split())
    skip_flags = all_flags - flags
    nb = read_nb(path)
    for cell in nb.cells:
        if skipped(cell, skip_flags):
            cell.outputs = []
    start, cwd = time.time(), os.getcwd()
    os.chdir(path.parent)
    try:
        shell = CaptureShell(path)
        shell.run_all(nb, exc_stop=True, preproc=lambda cell: skipped(cell, skip_flags))
    finally:
        os.chdir(cwd)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".ipynb", delete=False) as tmp:
        pass
    write_nb(nb, tmp.name)
    os.replace(tmp.name, path)
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--flags", nargs="*", default=[], help="test flags whose cells should run too (e.g. slow)")
    args = parser.parse_args()
    os.environ.update(QUIET)
    for path in args.notebooks:
        print(f"{path}: ", end="", flush=True)
        try:
            print(f"{run_notebook(path.resolve(), set(args.flags)):.1f}s")
            for problem in output_problems(read_nb(path)):
                print(f"  stored output to fix: {problem}")
        except Exception as error:  # report which notebook failed, then stop
            print(f"FAILED: {error}")
            sys.exit(1)


if __name__ == "__main__":
    main()
