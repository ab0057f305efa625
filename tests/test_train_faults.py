"""nomic_embed_train under faults, as real processes on configs/mlm_tiny.yaml (a 1-layer, 32-wide model) and the
offline corpus: a diverging run, two runs in one directory, bad configs and output directories, a half-written
metrics line, a full disk during a checkpoint, and ranks that must stop together. Each case asserts the exit status,
the first line of stderr and that nothing half-written is left.

Run: python -m pytest tests/test_train_faults.py  (the fast set: a diverging run, skipped steps, bad configs, a read-only
output directory); add -m slow for the cases that need several processes or a resume (the notebook checks the lock,
the cut-short metrics line and the manifest in-process)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import ENV, ROOT, TORCHRUN, bin_path, sets, train_cli, weights
from nomic_embed.train import read_metrics, run_training
from nomic_embed.trainer import list_checkpoints
from nomic_embed.utils import NonFiniteError, check_finite

TINY = ROOT / "configs" / "mlm_tiny.yaml"
MICRO = ["model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2", "model.intermediate_size=64",
         "logging.eval_every_steps=0", "logging.eval_max_chunks=16", "logging.progress_bar=false", "logging.plot=false",
         "training.global_batch_size=8", "training.micro_batch_size=4"]
# the diverging run: lr 3000 reached by a long warmup; NaN after about ten steps
DIVERGING = ["optimizer.lr=3000", "schedule.warmup_fraction=0.9", "checkpoint.keep_last=2", "training.max_steps=30",
             "checkpoint.every_steps=5"]
ERROR = "nomic_embed_train: error: "


@pytest.fixture(scope="module", autouse=True)
def corpus_cache():
    "Build the tiny config's packed corpus once (in-process) so subprocesses only read the cache."
    from nomic_embed.corpus import packed_corpus
    from nomic_embed.train import load_config
    config = load_config(TINY)
    packed_corpus(config.data, "train", progress=False)
    packed_corpus(config.data, "validation", progress=False)


def train(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    "`nomic_embed_train ARGS` as a subprocess (text output captured)."
    return subprocess.run(train_cli(*args), env=ENV, capture_output=True, text=True, timeout=timeout, **kwargs)


def first_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    return lines[0] if lines else ""


def half_written(directory: Path) -> list[str]:
    "Temporary files and directories a write left behind (`*.tmp`, `.name.*.tmp`, `final.tmp`)."
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.name.endswith(".tmp"))


def finite_checkpoints(run_dir: Path) -> list[int]:
    "Steps of the run's checkpoints, after checking that each one's weights are finite."
    from safetensors.torch import load_file
    for checkpoint in list_checkpoints(run_dir):
        check_finite(load_file(checkpoint / "model.safetensors"), str(checkpoint))
    return [int(p.name[5:]) for p in list_checkpoints(run_dir)]


def test_diverging_run_stops_at_the_first_nonfinite_step(tmp_path):
    run = tmp_path / "run"
    done = train("--config", str(TINY), *sets(*MICRO, *DIVERGING, f"output_dir={run}"))
    assert done.returncode == 2, done.stderr[-2000:]
    line = first_line(done.stderr)
    match = re.match(rf"{ERROR}step (\d+) of 30 is not finite: loss \S+, gradient norm \S+: training stopped", line)
    assert match, line
    stopped = int(match.group(1))
    rows = read_metrics(run)[0]
    assert rows[-1]["step"] == stopped and rows[-1]["skipped"] is True  # the step that stopped it, logged, never applied
    assert all(r["loss"] == r["loss"] for r in rows[:-1])  # every earlier step was finite
    kept = finite_checkpoints(run)
    assert kept == list(range(5, stopped, 5))[-2:], kept  # keep_last=2: the last two, all written before the stop
    assert f"checkpoints/step-{kept[-1]:06d}, is finite and kept" in line
    assert not (run / "final").exists() and half_written(run) == [] and not (run / ".lock").exists()
    print(line)


def test_skipped_nonfinite_steps_are_counted_then_stop(tmp_path):
    "training.skip_nonfinite_steps=2: the first two non-finite steps are dropped, the third stops the run."
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"step \d+ of 30 is not finite"):
        run_training(TINY, MICRO + DIVERGING + ["training.skip_nonfinite_steps=2", f"output_dir={run}"])
    rows = read_metrics(run)[0]
    skipped = [r["step"] for r in rows if r.get("skipped")]
    assert len(skipped) == 3 and rows[-1]["step"] == skipped[-1], skipped  # the third one stopped the run
    state = json.loads((list_checkpoints(run)[-1] / "trainer_state.json").read_text())
    assert state["nonfinite_steps"] == sum(step <= state["step"] for step in skipped[:2])  # the count is checkpointed
    finite_checkpoints(run)


@pytest.mark.slow
def test_a_second_run_in_the_same_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(train_cli("--config", str(TINY), *sets(*MICRO, "training.max_steps=5000", "checkpoint.every_steps=2",
                                                                     f"output_dir={run}")),
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None and not list_checkpoints(run):
            time.sleep(0.1)
        assert list_checkpoints(run), "the first run wrote no checkpoint"
        fresh = train("--config", str(TINY), *sets(*MICRO, "optimizer.lr=0.01", f"output_dir={run}"))
        resumed = train("--resume", str(run))
        for second in (fresh, resumed):
            assert second.returncode == 2, second.stderr[-2000:]
            assert first_line(second.stderr).startswith(f"{ERROR}{run} is in use by process {first.pid} on "), second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=300)
    assert first.returncode == 128 + signal.SIGTERM, err[-2000:]
    steps = [r["step"] for r in read_metrics(run)[0]]
    assert steps == list(range(1, len(steps) + 1))  # one run's rows only
    assert not (run / ".lock").exists()  # released: the run may be resumed now


def bad_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("argv, message", [
    (lambda t: ["--config", bad_config(t, "stage: mlm\ntraining: {max_steps: 4\n")], "is not valid YAML: expected ',' or '}'"),
    (lambda t: ["--config", str(TINY), *sets("training.max_steps=[4")], "--set training.max_steps=[4: the value is not valid YAML"),
    (lambda t: ["--config", bad_config(t, "- stage: mlm\n- seed: 1\n"), *sets("seed=2")], "must be a YAML mapping"),
    (lambda t: ["--config", str(t)], "is a directory; give a YAML file"),
    (lambda t: ["--config", str(TINY), *sets("optimizer.lr=.inf")], "optimizer.lr must be a finite number; got inf"),
    (lambda t: ["--config", str(TINY), *sets("optimizer.lr=.nan")], "optimizer.lr must be a finite number"),
    (lambda t: ["--config", str(TINY), *sets("training.max_grad_norm=.nan")], "training.max_grad_norm must be a finite number"),
    (lambda t: ["--config", str(TINY), *sets("model.hidden_size='32'")], "model: "),
    (lambda t: ["--config", str(TINY), *sets("model.hidden_size=-32")], "model: "),
    (lambda t: ["--config", str(TINY), *sets("model.num_attention_heads=0")], "model: "),
    (lambda t: ["--config", str(TINY), *sets(*MICRO, f"output_dir={t / 'file'}")], "is a file (or lies under one)"),
], ids=["yaml-config", "yaml-set", "list-config", "directory-config", "lr-inf", "lr-nan", "clip-nan", "hidden-str",
        "hidden-negative", "heads-zero", "output-is-file"])
def test_bad_configs_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    "In-process through the console entry point (the same boundary as the installed script): exit 2, one line, nothing created."
    from nomic_embed.cli import train as main
    (tmp_path / "file").write_text("not a directory")
    args = argv(tmp_path)
    if not any(arg.startswith("output_dir=") for arg in args):
        args += sets(f"output_dir={tmp_path / 'run'}")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith(ERROR) and message in first_line(err) and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created
    assert (tmp_path / "file").read_text() == "not a directory"


def as_nobody() -> list[str]:
    "A command prefix that drops root to the user nobody (root reads and writes anything), or [] when not root."
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot test a file root may not read")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.slow
def test_unreadable_config_and_unwritable_output_dir():
    "As a user the files deny (root is dropped to nobody): an unreadable config and an output_dir it may not create."
    prefix = as_nobody()
    shared = Path(tempfile.mkdtemp())  # not under pytest's 0700 tmp root, so that nobody reaches it
    try:
        shared.chmod(0o755)
        config = shared / "config.yaml"
        shutil.copy(TINY, config)
        config.chmod(0)
        locked = shared / "locked"
        locked.mkdir(mode=0o555)
        locked.chmod(0o555)
        for argv, message in ((["--config", str(config)], f"config file {config} cannot be read (Permission denied)"),
                              (["--config", str(TINY), *sets(*MICRO, f"output_dir={locked / 'run'}")],
                               f"output_dir {locked / 'run'} cannot be written (Permission denied)")):
            done = subprocess.run(prefix + train_cli(*argv), env=ENV, capture_output=True, text=True, timeout=300)
            assert done.returncode == 2, done.stderr[-2000:]
            assert first_line(done.stderr).startswith(ERROR) and message in first_line(done.stderr), done.stderr
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(shared)


def mount_tmpfs(directory: Path, size: str, *options: str) -> None:
    "Mount a tmpfs of `size` on `directory`, or skip the test with the reason."
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(directory)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}): this case needs root")


def test_read_only_output_dir(tmp_path):
    mount = tmp_path / "ro"
    mount_tmpfs(mount, "1m", "ro")
    try:
        done = train("--config", str(TINY), *sets(*MICRO, f"output_dir={mount / 'run'}"))
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert first_line(done.stderr) == f"{ERROR}output_dir {mount / 'run'} cannot be written (Read-only file system); " \
                                      "choose another output_dir or make it writable"


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_then_an_exact_resume(tmp_path):
    "A tmpfs with room for two checkpoints of the micro model (12 MB each): the third fails, is removed and said; resume after freeing space."
    common = MICRO + ["training.max_steps=6", "checkpoint.every_steps=1", "checkpoint.keep_last=10"]
    reference = tmp_path / "reference"
    assert train("--config", str(TINY), *sets(*common, f"output_dir={reference}")).returncode == 0
    mount = tmp_path / "small"
    mount_tmpfs(mount, "30m")
    try:
        run = mount / "run"
        full = train("--config", str(TINY), *sets(*common, f"output_dir={run}"))
        assert full.returncode == 2, full.stderr[-2000:]
        line = first_line(full.stderr)
        assert line.startswith(f"{ERROR}no space left on the disk of {run / 'checkpoints'} writing checkpoint step-000003 of "
                               f"{run} (needs "), line
        assert "finished work is kept" in line and "--resume" in line
        assert finite_checkpoints(run) == [1, 2] and half_written(run) == [] and not (run / "final").exists()
        subprocess.run(["mount", "-o", "remount,size=200m", str(mount)], check=True)  # space freed
        resumed = train("--resume", str(run))
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        a, b = weights(reference, 6), weights(run, 6)
        assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
        assert [r["loss"] for r in read_metrics(reference)[0]] == [r["loss"] for r in read_metrics(run)[0]]
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)  # weights() may still map a file


@pytest.mark.slow
def test_half_written_metrics_line_does_not_block_resume(tmp_path):
    "A crash in the middle of appending a row: the resume drops the cut line and continues exactly."
    run = tmp_path / "run"
    assert train("--config", str(TINY), *sets(*MICRO, "training.max_steps=4", "checkpoint.every_steps=2",
                                              "checkpoint.keep_last=5", f"output_dir={run}")).returncode == 0
    straight, rows = weights(run, 4), (run / "metrics.jsonl").read_text()
    shutil.rmtree(run / "checkpoints" / "step-000004")  # as if killed during step 3's row, after checkpoint 2
    shutil.rmtree(run / "final")
    kept = [line for line in rows.splitlines(keepends=True) if json.loads(line)["step"] <= 2]
    (run / "metrics.jsonl").write_text("".join(kept) + rows.splitlines()[2][:25])
    resumed = train("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    untimed = lambda text: [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "tokens_per_s")}
                            for line in text.splitlines()]
    assert untimed((run / "metrics.jsonl").read_text()) == untimed(rows)  # the log of the run never interrupted
    assert all(torch.equal(straight[k], weights(run, 4)[k]) for k in straight)


@pytest.mark.slow
def test_ranks_stop_together_on_a_nonfinite_step(tmp_path):
    "Two gloo processes: the loss and gradient norm are summed over ranks, so both stop at the same step (no hang)."
    run = tmp_path / "run"
    done = subprocess.run([*TORCHRUN, "--no-python", bin_path("nomic_embed_train"), "--config", str(TINY),
                           *sets(*MICRO, *DIVERGING, "distributed.backend=gloo", f"output_dir={run}")],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    stops = re.findall(r"error: step (\d+) of 30 is not finite", done.stderr)
    print("ranks that reported the stop:", stops)
    assert stops and len(set(stops)) == 1, done.stderr[-3000:]  # every rank that reported it: the same step
    assert read_metrics(run)[0][-1]["step"] == int(stops[0]) and not (run / "final").exists()
    finite_checkpoints(run)


def trained_final(tmp_path: Path) -> Path:
    "A 2-step micro run's final/ (the model a fine-tuning run starts from)."
    run = tmp_path / "start"
    run_training(TINY, MICRO + ["training.max_steps=2", "checkpoint.every_steps=2", f"output_dir={run}"])
    return run / "final"


@pytest.mark.slow
def test_init_from_a_damaged_or_nonfinite_checkpoint_is_refused_at_load(tmp_path):
    from safetensors.torch import load_file, save_file
    from nomic_embed.utils import write_manifest
    final = trained_final(tmp_path)
    flipped = tmp_path / "flipped"
    shutil.copytree(final, flipped)
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[-8] ^= 1
    (flipped / "model.safetensors").write_bytes(bytes(data))
    nan = tmp_path / "nan"
    shutil.copytree(final, nan)
    tensors = load_file(nan / "model.safetensors")
    first = sorted(name for name in tensors if tensors[name].is_floating_point())[0]
    tensors[first].view(-1)[0] = float("nan")
    save_file(tensors, nan / "model.safetensors", metadata={"format": "pt"})
    write_manifest(nan)  # an intact copy of NaN weights
    for start, message in ((flipped, "differs from the SHA-256"), (nan, "finite")):
        run = tmp_path / f"from-{start.name}"
        done = train("--config", str(TINY), *sets(*MICRO, f"init_from={start}", "training.max_steps=2", f"output_dir={run}"))
        assert done.returncode == 2, done.stderr[-2000:]
        assert first_line(done.stderr).startswith(ERROR) and message in first_line(done.stderr), done.stderr
        assert not run.exists()  # refused at load: no step ran, nothing written
