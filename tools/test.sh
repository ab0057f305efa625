#!/usr/bin/env bash
# The whole test suite: every notebook (nbdev_test) and the integration tests in tests/ (pytest).
#   bash tools/test.sh           # fast notebook cells + integration tests (what CI runs)
#   bash tools/test.sh --slow    # also the `#| slow` notebook cells and @pytest.mark.slow tests
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
if [ "${1:-}" = "--slow" ]; then flags=(--flags slow); marker=(); else flags=(); marker=(-m "not slow"); fi

echo "== notebooks (nbdev_test) =="
start=$(date +%s)
nbdev_test --n_workers 1 --timing "${flags[@]}"
echo "notebooks: $(( $(date +%s) - start ))s"

echo "== integration tests (pytest) =="
python -m pytest tests -q -rs "${marker[@]}"
