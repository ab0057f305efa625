#!/usr/bin/env bash
# The whole test suite: every notebook (nbdev's test_nb, two at a time, a line per notebook as it finishes) and the
# integration tests in tests/ (pytest, one line per test file as it runs).
#   bash tools/test.sh           # fast notebook cells + integration tests (what CI runs)
#   bash tools/test.sh --slow    # also the `#| slow` notebook cells and @pytest.mark.slow tests
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
if [ "${1:-}" = "--slow" ]; then flags=(--slow); marker=(); else flags=(); marker=(-m "not slow"); fi

echo "== notebooks =="
python tools/test_notebooks.py "${flags[@]}"

echo "== integration tests (pytest) =="
start=$(date +%s)
python -m pytest tests -rs --durations=10 "${marker[@]}"
echo "pytest: $(( $(date +%s) - start ))s"
