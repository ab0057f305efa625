"""Faults a demanding user meets, each as a real console script in a real process: the exit status, the first line
it prints, and what it leaves on disk (nothing half-written: no temporary file, no output that looks finished).

Every case is one fault class of the "nothing silently wrong, nothing lost" list: bad models (truncated, corrupt,
flipped bit, wrong shapes, NaN weights, a vocabulary too small, impossible sizes, broken JSON), bad input (a
directory, a lone surrogate, a lone CR, a non-.npy range file), bad devices, full disks (a small tmpfs, as root),
busy directories (a second process), interruptions (SIGINT, SIGTERM), read-only and unreadable paths.

The model is a tiny random-init NomicBERT (hidden 64, 2 layers) written once per session with the real
bert-base-uncased tokenizer of the offline all-MiniLM package; the texts are real news paragraphs (gensim's Lee
corpus). Permission cases run the command as root without the capabilities that let root ignore file modes
(`setpriv`), and skip where that is not possible; disk-full cases mount a tmpfs, and skip where mounting is not
permitted. Heavier cases (a run to interrupt, a whole curation or reproduction) are `slow`.
Run: python -m pytest tests/test_faults.py [-m slow]"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from conftest import ENV, ROOT

BIN = Path(sys.executable).parent  # the console scripts installed beside this Python
PYTHON = sys.executable
NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
        "rotary_scaling_factor": 2.0}


def lee_texts(n: int = 40) -> list[str]:
    "Real news paragraphs from gensim's Lee background corpus."
    from gensim.test.utils import datapath
    with open(datapath("lee_background.cor"), encoding="latin-1") as file:
        return [" ".join(line.split()) for line in file if line.strip()][:n]


def write_tiny_model(path: Path, **config) -> Path:
    "A tiny random-init NomicBERT with the offline bert-base-uncased tokenizer, written by `save_model`."
    import torch
    from nomic_embed.checkpoints import save_model
    from nomic_embed.corpus import load_tokenizer
    from nomic_embed.model import NomicBertConfig, NomicBertModel
    torch.manual_seed(0)
    model = NomicBertModel(NomicBertConfig(**(TINY | config)))
    save_model(model, path)
    load_tokenizer().save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    "The tiny model directory every case copies from."
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# ---- running a case -----------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    status: int
    stderr: str
    stdout: str = ""

    @property
    def first_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[0] if lines else ""


def command(name: str, *args) -> list[str]:
    "A console script's command line."
    return [str(BIN / name), *map(str, args)]


def run(argv: list[str], cwd: Path, *, during: Callable[[subprocess.Popen], None] | None = None,
        timeout: float = 600, env: dict | None = None) -> Outcome:
    "Run `argv` in `cwd`; `during(process)` acts on it while it runs (a signal, a second process, a truncation)."
    process = subprocess.Popen(argv, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=default_sigint)
    if during is not None:
        during(process)
    stdout, stderr = process.communicate(timeout=timeout)
    return Outcome(process.returncode, stderr, stdout)


def default_sigint() -> None:
    "In the child: Ctrl-C's default action, even where this test runs in the background (a shell makes those ignore SIGINT)."
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 300) -> None:
    "Poll `condition` until it holds; fail if `process` ends first."
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the process ended (status {process.returncode}) before the moment to act"
        assert time.monotonic() < deadline, "timed out waiting for the moment to act"
        time.sleep(0.05)


def temporaries(directory: Path) -> list[str]:
    "Temporary files `atomic_file` (`.NAME.XXXX.tmp`) or a staging directory left anywhere under `directory`."
    return sorted(str(p.relative_to(directory)) for p in directory.rglob(".*") if p.name.endswith(".tmp"))


def can_drop_dac() -> str | None:
    "Why permission cases cannot run here, or None: as root they need `setpriv` to drop the DAC capabilities."
    if os.geteuid() != 0:
        return None
    if shutil.which("setpriv") is None:
        return "running as root without setpriv: root reads and writes any file whatever its mode"
    return None


def as_user(argv: list[str]) -> list[str]:
    "`argv` run so that file modes apply (root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH)."
    return NO_DAC + argv if os.geteuid() == 0 else argv


@pytest.fixture
def small_disk(tmp_path):
    "A 2 MB tmpfs mounted for one test (skipped where mounting is not permitted)."
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(disk: Path, leave: int) -> Path:
    "Fill `disk` with a file until `leave` bytes are free; returns the filler."
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as file:
        file.write(bytes(max(0, free - leave)))
    return filler


def copy_model(tiny: Path, directory: Path, manifest: bool = True) -> Path:
    "A copy of the tiny model in `directory/model`, with or without its manifest (a damaged file is then met by the reader)."
    model = Path(shutil.copytree(tiny, directory / "model"))
    if not manifest:
        (model / "manifest.json").unlink()
    return model


def write_texts(path: Path, count: int = 40) -> Path:
    "`count` real news paragraphs, one per line (repeated when more are asked for than the corpus has)."
    texts = lee_texts(300)
    path.write_text("".join(texts[i % len(texts)] + "\n" for i in range(count)), encoding="utf-8")
    return path


def embed_cli(directory: Path, *args, input: str = "texts.txt", output: str = "out.npy") -> list[str]:
    "`nomic_embed_embed` on the tiny model in `directory` (absolute paths, so messages name them in full)."
    return command("nomic_embed_embed", "--model", directory / "model", "--task", "search_document", "--input",
                   directory / input, "--output", directory / output, "--quiet", *args)


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def nothing_left(directory: Path, keep: set[str]) -> None:
    "Nothing but `keep` at the top of `directory`, and no temporary file anywhere in it."
    assert temporaries(directory) == [], temporaries(directory)
    left = {p.name for p in directory.iterdir()} - keep
    assert not left, f"left behind: {sorted(left)}"


# ---- embedding: bad models, bad input, bad devices (one process each) ---------------------------------------------

def set_nan(model: Path) -> None:
    from safetensors.torch import load_file, save_file
    weights = load_file(model / "model.safetensors")
    weights["encoder.layers.1.norm2.weight"][:3] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})


def damage(kind: str, model: Path) -> None:
    "Damage the tiny model copy at `model` in the way `kind` names."
    weights = model / "model.safetensors"
    if kind == "nan_weights":
        set_nan(model)
    elif kind == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "empty_weights":
        weights.write_bytes(b"")
    elif kind == "garbage_weights":
        weights.write_bytes(bytes(range(256)) * 16)
    elif kind == "unreadable_weights":
        weights.chmod(0)
    elif kind == "missing_weights":
        weights.unlink()
    elif kind == "shapes_differ":
        edit_json(model / "config.json", intermediate_size=256)
    elif kind in CONFIG_CHANGES:
        edit_json(model / "config.json", **CONFIG_CHANGES[kind])
    elif kind == "config_not_json":
        (model / "config.json").write_text('{"hidden_size": 64,')
    elif kind == "tokenizer_not_json":
        (model / "tokenizer.json").write_text('{"version": "1.0",')
    else:
        raise ValueError(kind)


CONFIG_CHANGES = {"config_hidden_str": {"hidden_size": "64"}, "config_hidden_negative": {"hidden_size": -64},
                  "config_heads_0": {"num_attention_heads": 0}, "config_layers_0": {"num_hidden_layers": 0},
                  "config_not_divisible": {"num_attention_heads": 3}}

# kind -> (the message after "nomic_embed_embed: error: ", {model} = the model directory), slow or not
MODEL_FAULTS = {
    "nan_weights": ("non-finite values in the weights in {model}: encoder.layers.1.norm2.weight has 3 NaN and 0 infinite of "
                    "64 values; training diverged before this checkpoint was written: use an earlier checkpoint of the run", False),
    "truncated_weights": ("{model}/model.safetensors cannot be read as weights (Error while deserializing header: incomplete "
                          "metadata, file not fully covered); it is truncated or damaged: copy it again from where it came from", True),
    "empty_weights": ("{model}/model.safetensors cannot be read as weights (Error while deserializing header: header too small)", True),
    "garbage_weights": ("{model}/model.safetensors cannot be read as weights (Error while deserializing header:", True),
    "unreadable_weights": ("{model}/model.safetensors: Permission denied", True),
    "missing_weights": ("no weights in {model}: expected model.safetensors, pytorch_model.bin or a sharded index", True),
    "shapes_differ": ("encoder.layers.0.mlp.fc11.weight has shape (128, 64) in the checkpoint but (256, 64) in the model its "
                      "config describes (5 more tensor(s) differ too); the weights and config.json do not belong together", True),
    "config_hidden_str": ("{model}/config.json: hidden_size must be a positive integer; got '64' (a str)", True),
    "config_hidden_negative": ("{model}/config.json: hidden_size must be a positive integer; got -64", True),
    "config_heads_0": ("{model}/config.json: num_attention_heads must be a positive integer; got 0", True),
    "config_layers_0": ("{model}/config.json: num_hidden_layers must be a positive integer; got 0", True),
    "config_not_divisible": ("{model}/config.json: hidden_size (64) must be a multiple of num_attention_heads (3) with an even "
                             "quotient", True),
    "config_not_json": ("{model}/config.json is not valid JSON (Expecting property name enclosed in double quotes: line 1 "
                        "column 20 (char 19)); it may be truncated: restore it from where it came from", True),
    "tokenizer_not_json": ("{model}/tokenizer.json is not valid JSON (Expecting property name enclosed in double quotes: "
                           "line 1 column 19 (char 18)); it may be truncated: restore it from where it came from", True),
}


@pytest.mark.parametrize("kind", [pytest.param(kind, marks=[pytest.mark.slow] if slow else []) for kind, (_, slow) in MODEL_FAULTS.items()])
def test_a_broken_model_is_named_in_one_line(tiny, tmp_path, kind):
    if kind == "unreadable_weights" and (reason := can_drop_dac()):
        pytest.skip(reason)
    model = copy_model(tiny, tmp_path, manifest=False)  # the reader meets the damage (the manifest would name it first)
    damage(kind, model)
    write_texts(tmp_path / "texts.txt")
    argv = embed_cli(tmp_path)
    done = run(as_user(argv) if kind == "unreadable_weights" else argv, tmp_path)
    expected = "nomic_embed_embed: error: " + MODEL_FAULTS[kind][0].format(model=model)
    assert (done.status, done.first_line[:len(expected)]) == (2, expected), done.stderr[-2000:]
    assert len(done.stderr.splitlines()) == 1, done.stderr
    nothing_left(tmp_path, {"model", "texts.txt"})


def test_a_flipped_bit_is_caught_by_the_manifest(tiny, tmp_path):
    model = copy_model(tiny, tmp_path)
    weights = bytearray((model / "model.safetensors").read_bytes())
    weights[-1000] ^= 0b1000  # one bit of one weight: the file still parses, and would load
    (model / "model.safetensors").write_bytes(weights)
    write_texts(tmp_path / "texts.txt")
    done = run(embed_cli(tmp_path), tmp_path)
    assert (done.status, done.first_line) == (
        2, f"nomic_embed_embed: error: {model}/model.safetensors differs from the SHA-256 {model}/manifest.json records; "
           "the copy is incomplete or damaged: copy the directory again from its source"), done.stderr[-2000:]
    nothing_left(tmp_path, {"model", "texts.txt"})


@pytest.mark.slow
def test_a_vocabulary_smaller_than_the_tokenizer_is_refused(tmp_path):
    model = write_tiny_model(tmp_path / "model", vocab_size=1000)
    write_texts(tmp_path / "texts.txt")
    done = run(embed_cli(tmp_path), tmp_path)
    assert (done.status, done.first_line) == (
        2, f"nomic_embed_embed: error: {model} has 1,000 token embeddings but its tokenizer has 30,522 tokens, so ids from "
           "1,000 on have no vector; use the tokenizer the model was trained with (bert-base-uncased for nomic-embed models)"
    ), done.stderr[-2000:]
    nothing_left(tmp_path, {"model", "texts.txt"})


def write_ranges(path: Path, swapped: bool) -> None:
    import numpy as np
    low, high = -np.ones(64, np.float32), np.ones(64, np.float32)
    np.save(path, np.vstack([high, low] if swapped else [low, high]))


# case -> (files to write, extra arguments, message after "nomic_embed_embed: error: " ({d} = the case's directory), slow)
INPUT_FAULTS = {
    "rotary_nan": ({}, ["--rotary-scaling-factor", "nan"], "rotary_scaling_factor is the dynamic-NTK alpha and must be a finite "
                   "number >= 1 (or None for plain RoPE); got nan", True),
    "rotary_inf": ({}, ["--rotary-scaling-factor", "inf"], "rotary_scaling_factor is the dynamic-NTK alpha and must be a finite "
                   "number >= 1 (or None for plain RoPE); got inf", True),
    "int8_min_above_max": ({"ranges.npy": "swapped"}, ["--precision", "int8", "--ranges", "{d}/ranges.npy"],
                           "ranges[0] must hold each coordinate's minimum and ranges[1] its maximum, but 64 coordinate(s) have "
                           "min > max (coordinate 0: 1 > -1); are the rows swapped?", False),
    "ranges_not_npy": ({"ranges.txt": "-1 1\n-1 1\n"}, ["--precision", "int8", "--ranges", "{d}/ranges.txt"],
                       "ranges file '{d}/ranges.txt' is not a .npy file; write the (2, dimensionality) array with numpy.save", True),
    "input_is_a_directory": ({"docs.txt/": None}, [], "input '{d}/docs.txt' is a directory; give a .txt or .jsonl file", True),
    "lone_surrogate": ({"in.jsonl": '{"text": "The rain fell all day."}\n{"text": "Half \\ud800 a pair."}\n'}, [],
                       "{d}/in.jsonl, line 2: field 'text' holds a lone surrogate ('\\ud800' at character 6), which is not "
                       "text; fix or remove that line", False),
    "int_in_row_3": ({"in.jsonl": '{"text": "one"}\n{"text": "two"}\n{"text": 3}\n'}, [],
                     "{d}/in.jsonl, line 3: field 'text' is int, not a string", True),
    "device_typo": ({}, ["--device", "cdua"], "device 'cdua' is not a PyTorch device; use cpu, cuda, cuda:N or mps", False),
    "cuda_without_cuda": ({}, ["--device", "cuda"], "device 'cuda': ", True),
}


@pytest.mark.parametrize("case", [pytest.param(case, marks=[pytest.mark.slow] if spec[3] else []) for case, spec in INPUT_FAULTS.items()])
def test_bad_input_is_named_in_one_line(tiny, tmp_path, case):
    import torch
    if case == "cuda_without_cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    files, extra, message, _ = INPUT_FAULTS[case]
    copy_model(tiny, tmp_path)
    write_texts(tmp_path / "texts.txt")
    for name, content in files.items():
        if name.endswith("/"):
            (tmp_path / name).mkdir()
        elif content == "swapped":
            write_ranges(tmp_path / name, swapped=True)
        else:
            (tmp_path / name).write_text(content)
    source = next((name.rstrip("/") for name in files if name.endswith((".jsonl", "docs.txt/"))), "texts.txt")
    done = run(embed_cli(tmp_path, *[arg.format(d=tmp_path) for arg in extra], input=source), tmp_path)
    expected = "nomic_embed_embed: error: " + message.format(d=tmp_path)
    assert (done.status, done.first_line[:len(expected)]) == (2, expected), done.stderr[-2000:]
    assert len(done.stderr.splitlines()) == 1, done.stderr
    nothing_left(tmp_path, {"model", "texts.txt", *(name.rstrip("/") for name in files)})


def test_a_lone_carriage_return_ends_a_line(tiny, tmp_path):
    import numpy as np
    from nomic_embed.embed import Embedder
    copy_model(tiny, tmp_path)
    first, second = lee_texts(2)
    (tmp_path / "cr.txt").write_bytes(f"{first}\r{second}\r\n{first}\n".encode())
    done = run(embed_cli(tmp_path, input="cr.txt"), tmp_path)
    assert (done.status, done.first_line) == (0, f"nomic_embed_embed: wrote 3 embeddings of dimension 64 to {tmp_path}/out.npy")
    expected = Embedder.from_pretrained(tmp_path / "model", device="cpu").encode([first, second, first], "search_document")
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(can_drop_dac() is not None, reason=str(can_drop_dac()))
def test_an_unwritable_output_directory_is_one_line(tiny, tmp_path):
    copy_model(tiny, tmp_path)
    write_texts(tmp_path / "texts.txt")
    (tmp_path / "locked").mkdir(mode=0o555)
    done = run(as_user(embed_cli(tmp_path, output="locked/out.npy")), tmp_path)
    assert (done.status, done.first_line) == (
        2, f"nomic_embed_embed: error: cannot write to the output directory '{tmp_path}/locked' (Permission denied); choose a "
           "writable --output"), done.stderr[-2000:]
    assert list((tmp_path / "locked").iterdir()) == []


# ---- embedding: runs that something happens to -----------------------------------------------------------------

LONG = ("--chunk-size", "100", "--batch-size", "50")  # 1,000 or more texts in chunks of 100


def chunks_written(directory: Path, output: str = "out.npy") -> int:
    return len(list((directory / f"{output}.partial").glob("chunk-*.npy")))


@pytest.mark.slow
def test_input_truncated_mid_run_is_refused_and_nothing_kept(tiny, tmp_path):
    copy_model(tiny, tmp_path)
    write_texts(tmp_path / "texts.txt", 2000)

    def truncate(process):
        wait_for(lambda: chunks_written(tmp_path) >= 1, process)
        lines = (tmp_path / "texts.txt").read_text().splitlines(keepends=True)
        (tmp_path / "texts.txt").write_text("".join(lines[:300]))

    done = run(embed_cli(tmp_path, *LONG), tmp_path, during=truncate)
    assert (done.status, done.first_line) == (
        2, f"nomic_embed_embed: error: input '{tmp_path}/texts.txt' changed while it was being embedded (2,000 texts at the "
           "start, 300 now); nothing is kept: run again once the file is final"), done.stderr[-2000:]
    nothing_left(tmp_path, {"model", "texts.txt"})


@pytest.mark.slow
def test_a_second_resume_into_one_output_is_refused(tiny, tmp_path):
    import numpy as np
    copy_model(tiny, tmp_path)
    write_texts(tmp_path / "texts.txt", 2000)
    first = run(embed_cli(tmp_path, *LONG), tmp_path,
                during=lambda p: (wait_for(lambda: chunks_written(tmp_path) >= 1, p), p.send_signal(signal.SIGINT)))
    assert first.status == 130 and first.first_line.startswith("nomic_embed_embed: stopped by SIGINT; "), first.stderr
    second = {}

    def start_another(process):
        wait_for(lambda: (tmp_path / "out.npy.partial" / ".lock").exists(), process)
        second["done"] = run(embed_cli(tmp_path, *LONG, "--resume"), tmp_path)

    resumed = run(embed_cli(tmp_path, *LONG, "--resume"), tmp_path, during=start_another)
    refused = second["done"]
    assert refused.status == 2 and refused.first_line.startswith(
        f"nomic_embed_embed: error: {tmp_path}/out.npy.partial is in use by process "), refused.stderr
    assert "nomic_embed_embed --model" in refused.first_line and refused.first_line.endswith(
        "wait for it to finish or stop it, or choose another directory")
    assert resumed.status == 0, resumed.stderr[-2000:]
    assert np.load(tmp_path / "out.npy").shape == (2000, 64)
    nothing_left(tmp_path, {"model", "texts.txt", "out.npy"})


@pytest.mark.slow
@pytest.mark.parametrize("where", ["assembly", "chunk"])
def test_a_full_disk_is_one_line_and_the_resume_is_exact(tiny, tmp_path, small_disk, where):
    "The output on a 2 MB tmpfs, filled so that the chunks fit but the assembled matrix does not (or a chunk does not)."
    import numpy as np
    copy_model(tiny, tmp_path)
    write_texts(tmp_path / "texts.txt", 1000)  # 1,000 x 64 float32: 256 KB of chunks, 256 KB of output
    reference = run(embed_cli(tmp_path, *LONG, output="reference.npy"), tmp_path)
    assert reference.status == 0, reference.stderr[-2000:]
    filler = fill(small_disk, leave=420_000 if where == "assembly" else 70_000)
    argv = command("nomic_embed_embed", "--model", tmp_path / "model", "--task", "search_document", "--input",
                   tmp_path / "texts.txt", "--output", small_disk / "out.npy", "--quiet", *LONG)
    done = run(argv, tmp_path)
    if where == "assembly":
        assert done.status == 2 and done.first_line.startswith(
            f"nomic_embed_embed: error: no space left on the disk of {small_disk} writing out.npy, 1,000 rows (needs "
            "321.5 KB, "), done.stderr[-2000:]
        assert chunks_written(small_disk) == 10
    else:
        assert done.status == 2 and done.first_line.startswith(
            f"nomic_embed_embed: error: no space left on the disk of {small_disk}/out.npy.partial writing chunk-0000"), done.stderr
        assert 0 < chunks_written(small_disk) < 10
    assert done.first_line.endswith("finished work is kept: free space there, then run the same command again to continue "
                                    "(with --resume where it has one)")
    assert temporaries(small_disk) == [] and not (small_disk / "out.npy").exists()
    filler.unlink()
    resumed = run(argv + ["--resume"], tmp_path)
    assert resumed.status == 0, resumed.stderr[-2000:]
    assert np.load(small_disk / "out.npy").tobytes() == np.load(tmp_path / "reference.npy").tobytes()
    nothing_left(small_disk, {"out.npy"})


# ---- the Python API: the same rules without a console ------------------------------------------------------------

@pytest.fixture(scope="module")
def embedder(tiny):
    from nomic_embed.embed import Embedder
    return Embedder.from_pretrained(tiny, device="cpu")


def test_encode_checks_max_length_and_finiteness(tiny, embedder):
    import torch
    from nomic_embed.embed import Embedder
    from nomic_embed.checkpoints import load_model
    from nomic_embed.utils import NonFiniteError
    text = lee_texts(1)
    with pytest.raises(ValueError, match=r"max_length must be an integer of at least 3 tokens \(\[CLS\], a token, \[SEP\]\); got 0"):
        embedder.encode(text, "search_query", max_length=0)  # not "no limit"
    model = load_model(tiny)
    with torch.no_grad():
        model.encoder.layers[0].norm1.weight[5] = float("nan")  # weights that go bad after loading
    with pytest.raises(NonFiniteError, match=r"non-finite values in the embeddings: 64 NaN and 0 infinite of 64 values"):
        Embedder(model, embedder.tokenizer, device="cpu").encode(text, "search_query")


def test_int8_ranges_are_checked_in_the_api(embedder):
    import numpy as np
    from nomic_embed.embed import quantize_embeddings
    vectors = embedder.encode(lee_texts(4), "clustering")
    swapped = np.vstack([vectors.max(0), vectors.min(0)])
    with pytest.raises(ValueError, match=r"have min > max \(coordinate 0: "):
        quantize_embeddings(vectors, "int8", swapped)


@pytest.mark.slow
def test_exports_carry_a_manifest_and_ordinary_permissions(embedder, tmp_path):
    from nomic_embed.utils import CorruptFileError, verify_manifest
    umask = os.umask(0)
    os.umask(umask)
    for format in ("nomic_embed", "sentence_transformers"):
        path = embedder.save_pretrained(tmp_path / format, format=format)
        assert (path / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask, format  # not safetensors' 0600
        assert "model.safetensors" in verify_manifest(path)["files"]
        weights = bytearray((path / "model.safetensors").read_bytes())
        weights[-100] ^= 1
        (path / "model.safetensors").write_bytes(weights)
        with pytest.raises(CorruptFileError, match="model.safetensors differs from the SHA-256"):
            type(embedder).from_pretrained(path, device="cpu")


# ---- evaluation, curation, reproduction: the same boundary --------------------------------------------------------

def evaluate_cli(directory: Path, *args, output: str = "out.json") -> list[str]:
    return command("nomic_embed_evaluate", "--model", directory / "model", "--tasks", "LeeSTS", "--quiet",
                   "--output", directory / output, *args)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["nan_model", "truncated_weights", "device_typo", "cuda_without_cuda", "read_only_output"])
def test_evaluate_faults_are_one_line(tiny, tmp_path, case):
    import torch
    if case == "cuda_without_cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if case == "read_only_output" and (reason := can_drop_dac()):
        pytest.skip(reason)
    model = copy_model(tiny, tmp_path, manifest=False)
    argv = evaluate_cli(tmp_path)
    if case == "nan_model":
        set_nan(model)
        message = f"non-finite values in the weights in {model}: encoder.layers.1.norm2.weight has 3 NaN"
    elif case == "truncated_weights":
        damage(case, model)
        message = f"{model}/model.safetensors cannot be read as weights"
    elif case == "device_typo":
        argv, message = argv + ["--device", "cdua"], "device 'cdua' is not a PyTorch device"
    elif case == "cuda_without_cuda":
        argv, message = argv + ["--device", "cuda"], "device 'cuda': "
    else:
        (tmp_path / "locked").mkdir(mode=0o555)
        argv = as_user(evaluate_cli(tmp_path, output="locked/out.json"))
        message = f"cannot write to '{tmp_path}/locked'; choose a writable --output"
    done = run(argv, tmp_path)
    expected = f"nomic_embed_evaluate: error: {message}"
    assert (done.status, done.first_line[:len(expected)]) == (2, expected), done.stderr[-2000:]
    nothing_left(tmp_path, {"model", "locked"})


@pytest.mark.slow
def test_evaluate_interrupted_is_one_line_and_resumable(tiny, tmp_path):
    copy_model(tiny, tmp_path)

    def interrupt(process):
        wait_for(lambda: (tmp_path / "out.json.partial" / "run.json").exists(), process)
        time.sleep(1)
        process.send_signal(signal.SIGINT)

    done = run(evaluate_cli(tmp_path), tmp_path, during=interrupt)
    assert (done.status, done.stderr.strip()) == (
        130, f"nomic_embed_evaluate: stopped by SIGINT; the scores finished so far are kept in {tmp_path}/out.json.partial: "
             "run the same command again to continue"), done.stderr[-2000:]
    again = run(evaluate_cli(tmp_path), tmp_path)
    assert again.status == 0 and json.loads((tmp_path / "out.json").read_text())["models"], again.stderr[-2000:]
    nothing_left(tmp_path, {"model", "out.json", "out.md"})


CURATE_CONFIG = ("sources:\n  - {name: topics, offline: pydoc_topics, query_prefix: search_query}\n"
                 "teacher_max_length: 32\nbatch_size: 32\nsample_size: 60\n")


def curate_cli(*args) -> list[str]:
    return command("nomic_embed_curate", "filter", "--config", "curate.yaml", "--log-every", "1", *args)


CURATE_FAULTS = {  # case -> (config text, output, extra arguments, message after "nomic_embed_curate: error: ")
    "yaml_syntax": ("sources: [\n  {name: topics\n", "out", [], "--config curate.yaml is not valid YAML: while parsing a flow"),
    "unreadable_config": (CURATE_CONFIG, "out", [], "curate.yaml: Permission denied"),
    "output_under_a_file": (CURATE_CONFIG, "afile/out", [], "afile/out: Not a directory"),
    "read_only_output": (CURATE_CONFIG, "locked/out", [], "locked/out: Permission denied"),
    "device_typo": (CURATE_CONFIG, "out", ["--device", "cdua"], "device 'cdua' is not a PyTorch device"),
    "cuda_without_cuda": (CURATE_CONFIG, "out", ["--device", "cuda"], "device 'cuda': "),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=[] if c == "yaml_syntax" else [pytest.mark.slow]) for c in CURATE_FAULTS])
def test_curate_faults_are_one_line(tmp_path, case):
    import torch
    if case == "cuda_without_cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if case in ("unreadable_config", "read_only_output") and (reason := can_drop_dac()):
        pytest.skip(reason)
    config, output, extra, message = CURATE_FAULTS[case]
    (tmp_path / "curate.yaml").write_text(config)
    (tmp_path / "afile").write_text("a file, not a directory")
    (tmp_path / "locked").mkdir(mode=0o555)
    if case == "unreadable_config":
        (tmp_path / "curate.yaml").chmod(0)
    argv = curate_cli("--output", output, *extra)
    done = run(as_user(argv) if case in ("unreadable_config", "read_only_output") else argv, tmp_path)
    expected = f"nomic_embed_curate: error: {message}"
    assert (done.status, done.first_line[:len(expected)]) == (2, expected), done.stderr[-2000:]
    assert len(done.stderr.splitlines()) == 1, done.stderr
    nothing_left(tmp_path, {"curate.yaml", "afile", "locked"})
    assert list((tmp_path / "locked").iterdir()) == []



def damaged_data(kind: str, directory: Path) -> str:
    """Write a real data file damaged as copies are in practice; returns its name. `latin1_corpus`: Wikipedia text
    saved as Latin-1; `cut_jsonl`: pairs cut mid-row; `cut_parquet`: the first half of a parquet file."""
    from nomic_embed.offline import offline_documents
    from nomic_embed.pairs import offline_pairs, write_pairs
    if kind == "latin1_corpus":
        texts = [t for t in offline_documents("offline_wikipedia") if "é" in t][:3]
        (directory / "corpus.txt").write_bytes("\n".join(texts).encode("latin-1", errors="replace"))
        return "corpus.txt"
    pairs = offline_pairs(["pydoc_topics"])["pydoc_topics"][:40]
    name = "pairs.jsonl" if kind == "cut_jsonl" else "pairs.parquet"
    data = write_pairs(pairs, directory / name).read_bytes()
    (directory / name).write_bytes(data[:len(data) - 40] if kind == "cut_jsonl" else data[:len(data) // 2])
    return name


DATA_FAULTS = {  # case -> (command line in the case's directory, a pattern the last line of stderr starts with)
    "latin1_corpus": (["nomic_embed_train", "--config", ROOT / "configs/mlm_tiny.yaml", "--set", "output_dir=out", "--set",
                       "data.sources=[{path: text, data_files: corpus.txt}]"],
                      r"nomic_embed_train: error: corpus source 'text': corpus.txt line \d+: byte 0xe9 at column \d+ is not UTF-8"),
    "cut_jsonl": (["nomic_embed_train", "--config", ROOT / "configs/finetune_own_pairs_tiny.yaml", "--set", "init_from=null",
                   "--set", "output_dir=out", "--set", "data.sources=[{name: own, data_files: pairs.jsonl}]"],
                  r"nomic_embed_train: error: source 'own': pairs.jsonl line 40: not a JSON row \(.*\); the file ends mid-row"),
    "cut_parquet": (["nomic_embed_curate", "filter", "--config", "curate.yaml", "--output", "out"],
                    r"nomic_embed_curate: error: pairs.parquet: not a readable parquet file \("),
}


@pytest.mark.parametrize("case", DATA_FAULTS)
def test_a_damaged_data_file_is_named_with_its_line(tmp_path, case):
    "A corpus in another encoding or a copy cut short: the message names the file, the line and the fix; nothing is written."
    damaged_data(case, tmp_path)
    (tmp_path / "curate.yaml").write_text("sources:\n  - {name: topics, data_files: [pairs.parquet]}\n")
    argv, message = DATA_FAULTS[case]
    done = run(command(*argv), tmp_path)
    last = done.stderr.strip().splitlines()[-1]
    assert done.status == 2 and re.match(message, last), done.stderr[-2000:]
    assert last.endswith("fix or copy the file again, or remove it from data_files"), last
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.parquet"))

@pytest.mark.slow
def test_curate_sigterm_exits_143_and_resumes(tmp_path):
    (tmp_path / "curate.yaml").write_text(CURATE_CONFIG)

    def terminate(process):
        wait_for(lambda: (tmp_path / "out" / "run.json").exists(), process)
        process.send_signal(signal.SIGTERM)

    done = run(curate_cli("--output", "out"), tmp_path, during=terminate)
    last = done.stderr.strip().splitlines()[-1]
    assert (done.status, last) == (143, "nomic_embed_curate: stopped by SIGTERM; finished shards are kept in out: run the "
                                        "same command again to resume"), done.stderr[-2000:]
    assert temporaries(tmp_path) == []
    again = run(curate_cli("--output", "out"), tmp_path)
    assert again.status == 0 and (tmp_path / "out" / "report.json").exists(), again.stderr[-2000:]


@pytest.mark.slow
def test_curate_full_disk_is_one_line(tmp_path, small_disk):
    (tmp_path / "curate.yaml").write_text(CURATE_CONFIG)
    fill(small_disk, leave=60_000)
    done = run(curate_cli("--output", str(small_disk / "out")), tmp_path)
    last = done.stderr.strip().splitlines()[-1]
    assert done.status == 2 and last.startswith(f"nomic_embed_curate: error: no space left on the disk of {small_disk}/out"), done.stderr
    assert temporaries(small_disk) == []


def reproduce_cli(*args) -> list[str]:
    return command("nomic_embed_reproduce", "--budget", "micro", *args)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["output_under_a_file", "read_only_output"])
def test_reproduce_output_faults_are_one_line(tmp_path, case):
    if case == "read_only_output" and (reason := can_drop_dac()):
        pytest.skip(reason)
    (tmp_path / "afile").write_text("a file, not a directory")
    (tmp_path / "locked").mkdir(mode=0o555)
    out, message = ("afile/out", "afile/out: Not a directory") if case == "output_under_a_file" else \
                   ("locked/out", "locked/out: Permission denied")
    argv = reproduce_cli("--out", out)
    done = run(as_user(argv) if case == "read_only_output" else argv, tmp_path)
    assert (done.status, done.stderr.strip()) == (2, f"nomic_embed_reproduce: error: {message}"), done.stderr[-2000:]
    nothing_left(tmp_path, {"afile", "locked"})


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["SIGINT in training", "SIGTERM in evaluation"])
def test_reproduce_interrupted_says_how_to_continue(tmp_path, moment):
    name = moment.split()[0]
    marker = tmp_path / "out" / ("runs" if name == "SIGINT" else "phases/finetune.json")

    def interrupt(process):
        if name == "SIGINT":
            wait_for(lambda: any(marker.rglob("metrics.jsonl")) if marker.exists() else False, process)
        else:
            wait_for(marker.exists, process)
            time.sleep(2)
        process.send_signal(getattr(signal, name))

    done = run(reproduce_cli("--out", "out"), tmp_path, during=interrupt)
    last = done.stderr.strip().splitlines()[-1]
    assert (done.status, last) == (
        128 + getattr(signal, name), f"nomic_embed_reproduce: stopped by {name}; the finished phases are kept in out: run "
                                     "`nomic_embed_reproduce --out out --budget micro` again to continue where it stopped"
    ), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "nomic_embed_train" not in done.stderr


@pytest.mark.slow
def test_a_second_reproduction_into_one_out_is_refused(tmp_path):
    second = {}

    def start_another(process):
        wait_for((tmp_path / "out" / "settings.json").exists, process)
        second["done"] = run(reproduce_cli("--out", "out"), tmp_path)
        process.send_signal(signal.SIGINT)

    run(reproduce_cli("--out", "out"), tmp_path, during=start_another)
    refused = second["done"]
    assert refused.status == 2 and refused.first_line.startswith("nomic_embed_reproduce: error: out is in use by process "), \
        refused.stderr
    assert "nomic_embed_reproduce --budget micro --out out" in refused.first_line
