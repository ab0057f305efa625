#!/usr/bin/env bash
# Set up nomic_embed from scratch: a virtual environment in .venv with PyTorch and this package
# (editable, with the development extras: nbdev, pytest, sentence-transformers, mteb, offline data).
#   bash tools/setup.sh                      # CPU PyTorch (torch==2.13.0)
#   TORCH_SPEC=skip bash tools/setup.sh      # keep a PyTorch you installed yourself (GPU users)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "$TORCH_SPEC" = skip ]; then
  .venv/bin/python -m pip install --quiet -e ".[dev]"
else
  .venv/bin/python -m pip install --quiet "$TORCH_SPEC" -e ".[dev]"
fi
# the Debian packages of offline real text (training and evaluation sources), where this user may install them
if [ "$(id -u)" = 0 ]; then bash tools/offline_data.sh
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo bash tools/offline_data.sh
else echo "note: run 'sudo bash tools/offline_data.sh' once for the offline text packages (WordNet, Python docs, dictionaries, man pages, fortunes)"
fi
.venv/bin/python -c "import torch, nomic_embed; print(f'nomic_embed {nomic_embed.__version__} installed in .venv (torch {torch.__version__})')"
