"""Run every notebook's tests with nbdev's own `test_nb`, several at a time, printing each notebook as it finishes.

    python tools/test_notebooks.py                 # all notebooks, 2 at a time, `#| slow` cells skipped
    python tools/test_notebooks.py --slow          # also the slow cells
    python tools/test_notebooks.py nbs/03_mlm.ipynb --workers 1

The same as `nbdev_test --n_workers N`, with a line per notebook as soon as it is done (its time and result) and a
summary at the end; each notebook runs in a process of its own with one thread per worker (the 2-core machines
this project is tested on would otherwise oversubscribe). Exit status 1 if any notebook fails.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(notebook: str, flags: list[str]) -> tuple[str, bool, float]:
    "Test one notebook in this (worker) process the way nbdev_test does."
    from nbdev.config import get_config
    from nbdev.test import test_nb
    multiprocessing.set_start_method("fork", force=True)  # what a notebook's own subprocesses expect (gensim forks workers)
    os.chdir(ROOT / "nbs")
    skip = get_config().tst_flags.split()
    passed, seconds = test_nb(Path(notebook).absolute(), skip_flags=skip, force_flags=flags, basepath=get_config().config_path)
    return notebook, passed, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks to test (default: every nbs/*.ipynb)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("NOTEBOOK_WORKERS", 2)))
    parser.add_argument("--slow", action="store_true", help="also run `#| slow` cells")
    args = parser.parse_args()
    notebooks = [str(Path(n).absolute()) for n in args.notebooks] or sorted(str(p) for p in (ROOT / "nbs").glob("[!_.]*.ipynb"))
    flags = ["slow"] if args.slow else []
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the workers (torch reads it at import)
    start, failed = time.time(), []
    # a fresh process per notebook: running a notebook replaces the process's __main__ (IPython), and one notebook's
    # imports and global state must not leak into the next
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(args.workers, 1), mp_context=context, max_tasks_per_child=1) as pool:
        futures = [pool.submit(run_one, notebook, flags) for notebook in notebooks]
        for done, future in enumerate(as_completed(futures), 1):
            notebook, passed, seconds = future.result()
            name = Path(notebook).name
            print(f"[{done}/{len(notebooks)}] {name}: {'ok' if passed else 'FAILED'} in {seconds:.0f} s "
                  f"({time.time() - start:.0f} s elapsed)", flush=True)
            if not passed:
                failed.append(name)
    print(f"notebooks: {len(notebooks) - len(failed)} passed, {len(failed)} failed in {time.time() - start:.0f} s", flush=True)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
