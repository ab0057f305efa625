#!/usr/bin/env bash
# Set up nomic_embed from scratch: a virtual environment in .venv with PyTorch and this package
# (editable, with the development extras: nbdev, pytest, sentence-transformers, mteb, offline data; and the
# experiment trackers TensorBoard, W&B and trackio).
#   bash tools/setup.sh                      # CPU PyTorch (torch==2.13.0)
#   TORCH_SPEC=skip bash tools/setup.sh      # keep a PyTorch you installed yourself (GPU users)
#   DEEPSPEED=0 bash tools/setup.sh          # without DeepSpeed (its tests are then skipped)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "$TORCH_SPEC" = skip ]; then
  .venv/bin/python -m pip install --quiet -e ".[dev,tracking]"
else
  .venv/bin/python -m pip install --quiet "$TORCH_SPEC" -e ".[dev,tracking]"
fi
# DeepSpeed (stage 1's ZeRO-2, tested on 2 CPU ranks; DEEPSPEED=0 skips it): built against the PyTorch above
# (--no-build-isolation, so pip never fetches another torch). On CPU its shared-memory communication op is compiled
# here, once (~2 CPU minutes), instead of at the first DeepSpeed run.
if [ "${DEEPSPEED:-1}" = 1 ]; then
  if .venv/bin/python -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then export DS_BUILD_SHM_COMM=1; fi
  .venv/bin/python -m pip install --quiet setuptools wheel
  DS_BUILD_OPS=0 .venv/bin/python -m pip install --quiet --no-cache-dir --no-build-isolation -e ".[deepspeed]"
fi
# the Debian packages of offline real text (training and evaluation sources), where this user may install them
if [ "$(id -u)" = 0 ]; then bash tools/offline_data.sh
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo bash tools/offline_data.sh
else echo "note: run 'sudo bash tools/offline_data.sh' once for the offline text packages (WordNet, Python docs, dictionaries, man pages, fortunes)"
fi
.venv/bin/python -c "import torch, nomic_embed; print(f'nomic_embed {nomic_embed.__version__} installed in .venv (torch {torch.__version__})')"
