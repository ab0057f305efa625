import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# child processes of the trainer tests: one thread each on the shared cores, never the hub
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture
def root() -> Path:
    "The project root."
    return ROOT


def bin_path(name: str) -> str:
    "A console script installed beside the running Python (the venv's bin/)."
    return str(Path(sys.executable).parent / name)


def train_cli(*args: str) -> list[str]:
    "The trainer's command line: the console script installed beside this Python."
    return [bin_path("nomic_embed_train"), *args]


def sets(*items: str) -> list[str]:
    "`--set` overrides for the trainer's command line."
    return [arg for item in items for arg in ("--set", item)]


def weights(run_dir: Path, step: int) -> dict:
    "The model tensors of a run's checkpoint at `step`."
    from safetensors.torch import load_file
    return load_file(run_dir / "checkpoints" / f"step-{step:06d}" / "model.safetensors")


def expect_error(capsys, argv: list[str], message: str) -> str:
    "Run `nomic_embed_train` with `argv`; it must exit with status 2 and name `message` on stderr."
    from nomic_embed.cli import train as main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    return err
