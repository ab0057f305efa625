import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def root() -> Path:
    "The project root."
    return ROOT


def bin_path(name: str) -> str:
    "A console script installed beside the running Python (the venv's bin/)."
    return str(Path(sys.executable).parent / name)
