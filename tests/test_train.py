"""Stage-1 trainer tests that need real processes: kill -9 and exact resume, torchrun (gloo) parity,
the console script's bad-input errors, and (slow) the tiny MLM run reaching well above the unigram baseline.

All runs use the offline Wikipedia sample (gensim test data) and configs/mlm_tiny.yaml; the packed corpus is
cached under $NOMIC_EMBED_CACHE (default ~/.cache/nomic_embed), so only the first run tokenises."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ENV, ROOT, TORCHRUN, bin_path, expect_error, sets, train_cli, weights
from nomic_embed.train import read_metrics, run_training

TINY = ROOT / "configs" / "mlm_tiny.yaml"
# a 1-layer, 32-wide model: fast enough that process start-up dominates
MICRO = ["model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2", "model.intermediate_size=64",
         "logging.eval_every_steps=0", "logging.eval_max_chunks=64", "logging.progress_bar=false", "logging.plot=false"]


def snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    "Every file under `directory` with its mtime and content hash."
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def corpus_cache():
    "Build the tiny config's packed corpus once (in-process) so subprocesses only read the cache."
    from nomic_embed.corpus import packed_corpus
    from nomic_embed.train import load_config
    config = load_config(TINY)
    packed_corpus(config.data, "train", progress=False)
    packed_corpus(config.data, "validation", progress=False)


def test_kill_and_resume_is_bitwise_exact(tmp_path):
    steps, every = 24, 4
    common = MICRO + [f"training.max_steps={steps}", f"checkpoint.every_steps={every}", "checkpoint.keep_last=10",
                      "training.global_batch_size=8", "training.micro_batch_size=4"]
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    subprocess.run(train_cli("--config", str(TINY), *sets(*common, f"output_dir={reference}")), env=ENV, check=True, capture_output=True)

    process = subprocess.Popen(train_cli("--config", str(TINY), *sets(*common, f"output_dir={victim}")), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = victim / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:  # kill once a checkpoint exists and training has moved past it
        if metrics.exists() and len(metrics.read_text().splitlines()) >= every + 3:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed; raise max_steps"
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert every < max(logged) < steps and not (victim / "final").exists()
    killed_at = max(logged)

    resumed = subprocess.run(train_cli("--resume", str(victim)), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = weights(reference, steps), weights(victim, steps)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "weights after kill + resume differ from the uninterrupted run"
    ref_losses = [r["loss"] for r in read_metrics(reference)[0]]
    res_losses = [r["loss"] for r in read_metrics(victim)[0]]
    assert [r["step"] for r in read_metrics(victim)[0]] == list(range(1, steps + 1))  # no duplicated or missing steps
    assert ref_losses == res_losses
    print(f"killed after step {killed_at}, resumed from step {max(s for s in range(0, killed_at + 1, every))}: "
          f"{len(a)} tensors bitwise equal, {steps} losses equal")


def test_torchrun_two_processes_match_one(tmp_path):
    common = MICRO + ["training.max_steps=6", "training.global_batch_size=16", "training.micro_batch_size=4",
                      "checkpoint.every_steps=100", "logging.eval_every_steps=3"]
    single, double = tmp_path / "single", tmp_path / "double"
    subprocess.run(train_cli("--config", str(TINY), *sets(*common, f"output_dir={single}")), env=ENV, check=True, capture_output=True)
    torchrun = [*TORCHRUN, "--no-python", bin_path("nomic_embed_train")]
    double_config = ["--config", str(TINY), *sets(*common, f"output_dir={double}", "distributed.backend=gloo")]
    prepared = subprocess.run(train_cli(*double_config, "--prepare"), env=ENV, capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert json.loads(prepared.stdout.strip().splitlines()[-1])["samples"] == json.loads((double / "prepared.json").read_text())["samples"]
    result = subprocess.run(torchrun + double_config, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "was not prepared" not in result.stderr  # the ranks found the prepared data
    (one_train, one_eval), (two_train, two_eval) = read_metrics(single), read_metrics(double)
    assert [r["step"] for r in one_train] == [r["step"] for r in two_train] == list(range(1, 7))
    differences = [abs(a["loss"] - b["loss"]) for a, b in zip(one_train, two_train)]
    print("per-step |Δloss| 1 vs 2 processes:", [f"{d:.2e}" for d in differences])
    assert max(differences) <= 1e-5
    assert [r["tokens"] for r in one_train] == [r["tokens"] for r in two_train]
    for a, b in zip(one_eval, two_eval):  # held-out evaluation is sharded over ranks and summed
        assert a["eval_targets"] == b["eval_targets"] and abs(a["eval_loss"] - b["eval_loss"]) <= 1e-5
    wa, wb = weights(single, 6), weights(double, 6)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


def test_unknown_config_key_fails_before_any_work(tmp_path, capsys):
    run = tmp_path / "run"
    expect_error(capsys, ["--config", str(TINY), *sets(f"output_dir={run}", "training.max_setps=5")], "training.max_setps")
    expect_error(capsys, ["--config", str(TINY), *sets(f"output_dir={run}", "mlm.mlm_probabilty=0.2")], "mlm.mlm_probabilty")
    expect_error(capsys, ["--config", str(TINY), *sets(f"output_dir={run}", "epochs=3")], "unknown top-level key(s) epochs")
    expect_error(capsys, ["--config", str(TINY), *sets(f"output_dir={run}", "mlm.mlm_probability=1.5")], "mlm.mlm_probability must be in (0, 1)")
    expect_error(capsys, ["--config", str(TINY), *sets(f"output_dir={run}", "training.precision=fp16")], "training.precision")
    expect_error(capsys, ["--config", str(tmp_path / "missing.yaml")], "does not exist")
    assert not run.exists(), "nothing may be written for an invalid config"


def test_empty_and_whitespace_corpus(tmp_path, capsys):
    empty, blank = tmp_path / "empty.txt", tmp_path / "blank.txt"
    empty.write_text("")
    blank.write_text("   \n\t\n \n")
    for path in (empty, blank):
        source = "data.sources=[{path: text, data_files: '%s'}]" % path
        expect_error(capsys, ["--config", str(TINY), *sets(f"output_dir={tmp_path / 'run'}", source, f"data.cache_dir={tmp_path / 'cache'}")],
                     "corpus is empty")
    assert not (tmp_path / "run").exists()


def test_missing_resume_directory(tmp_path, capsys):
    expect_error(capsys, ["--resume", str(tmp_path / "no-such-run")], "does not exist")
    (tmp_path / "empty-run").mkdir()
    expect_error(capsys, ["--resume", str(tmp_path / "empty-run")], "no complete checkpoint")


def test_corrupted_checkpoint_is_detected_and_nothing_is_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    run_training(TINY, MICRO + ["training.max_steps=4", "checkpoint.every_steps=2", "training.global_batch_size=8",
                                "training.micro_batch_size=4", f"output_dir={run}"])
    for name in ("model.safetensors", "optimizer.pt"):
        target = run / "checkpoints" / "step-000004" / name
        original = target.read_bytes()
        target.write_bytes(original[:50] + bytes([original[50] ^ 0xFF]) + original[51:])  # flip one byte
        before = snapshot(run)
        err = expect_error(capsys, ["--resume", str(run)], "differs from the SHA-256")
        assert name in err
        assert snapshot(run) == before, "a failed resume must not change the run directory"
        target.write_bytes(original)
    (run / "checkpoints" / "step-000004" / "scheduler.pt").unlink()
    expect_error(capsys, ["--resume", str(run)], "is missing")
    # a fresh start into a directory that holds a run is refused (it would mix two runs), and changes nothing
    before = snapshot(run)
    expect_error(capsys, ["--config", str(TINY), *sets(*MICRO, f"output_dir={run}")], "already holds a run")
    assert snapshot(run) == before


@pytest.mark.slow
def test_tiny_mlm_beats_unigram_baseline(tmp_path):
    "configs/mlm_tiny.yaml as shipped (2 layers, hidden 128, 128-token chunks): a few CPU minutes."
    run = tmp_path / "tiny"
    started = time.time()
    summary = run_training(TINY, [f"output_dir={run}", "logging.progress_bar=false"])
    train_rows, eval_rows = read_metrics(run)
    baseline = json.loads((run / "baseline.json").read_text())
    first = sum(r["loss"] for r in train_rows[:10]) / 10
    last = sum(r["loss"] for r in train_rows[-10:]) / 10
    print(f"{summary['step']} steps in {time.time() - started:.0f} s; training loss {first:.3f} -> {last:.3f}; held-out accuracy "
          f"{eval_rows[-1]['eval_accuracy']:.4f} vs unigram {baseline['accuracy']:.4f}; held-out loss {eval_rows[-1]['eval_loss']:.3f} "
          f"vs unigram {baseline['loss']:.3f}")
    assert last < first - 2.5
    assert eval_rows[-1]["eval_accuracy"] > 1.6 * baseline["accuracy"]
    assert eval_rows[-1]["eval_loss"] < baseline["loss"]


def test_sigterm_checkpoints_the_current_step_and_resume_is_exact(tmp_path):
    "SIGTERM (a scheduler's preemption notice) mid-run: the step in flight finishes, is checkpointed, the run exits 143 with the resume command."
    steps = 40
    common = MICRO + [f"training.max_steps={steps}", "checkpoint.every_steps=1000", "training.global_batch_size=8",
                      "training.micro_batch_size=4"]
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    subprocess.run(train_cli("--config", str(TINY), *sets(*common, f"output_dir={reference}")), env=ENV, check=True, capture_output=True)
    process = subprocess.Popen(train_cli("--config", str(TINY), *sets(*common, f"output_dir={victim}")), env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = victim / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    message = err.strip().splitlines()[-1]
    assert message.startswith("nomic_embed_train: stopped by SIGTERM after step") and f"--resume {victim}" in message, message
    assert "Traceback" not in err
    stopped_at = int(message.split("after step ")[1].split()[0])
    assert 5 <= stopped_at < steps and (victim / "checkpoints" / f"step-{stopped_at:06d}" / "manifest.json").exists()
    assert max(json.loads(line)["step"] for line in metrics.read_text().splitlines()) == stopped_at  # nothing lost
    resumed = subprocess.run(train_cli("--resume", str(victim)), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = weights(reference, steps), weights(victim, steps)
    assert all(torch.equal(a[k], b[k]) for k in a), "weights after SIGTERM + resume differ from the uninterrupted run"
    assert [r["loss"] for r in read_metrics(reference)[0]] == [r["loss"] for r in read_metrics(victim)[0]]
    print(f"SIGTERM after step {stopped_at}: checkpointed, resumed, {len(a)} tensors bitwise equal")


def test_written_files_follow_the_umask(tmp_path):
    "Files a run writes get the permissions the umask allows (0644 under the usual 022), not mkstemp's 0600."
    import os
    run = tmp_path / "run"
    run_training(TINY, MICRO + ["training.max_steps=2", "checkpoint.every_steps=2", "training.global_batch_size=8",
                                "training.micro_batch_size=4", f"output_dir={run}"])
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {"config.yaml", "manifest.json", "model.safetensors", "config.json"} <= {p.name for p in files}
    modes = {p.relative_to(run).as_posix(): p.stat().st_mode & 0o777 for p in files}
    assert all(mode == 0o666 & ~umask for mode in modes.values()), modes


def test_help_loads_no_torch():
    "`nomic_embed_train --help` and a bad flag answer before PyTorch loads."
    probe = ("import sys\nfrom nomic_embed.cli import train as main\nfor argv in (['--help'], ['--no-such-flag']):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout + done.stderr
    assert "unrecognized arguments: --no-such-flag" in done.stderr


def test_plan_of_the_full_scale_configs(capsys, monkeypatch):
    "`--plan` prints per-GPU memory and time of the three full-scale configs; each fits an 80 GB H100."
    from nomic_embed.cli import train as main
    monkeypatch.chdir(ROOT)  # the configs' paths (the DeepSpeed JSON) start at the repository root
    for name, unit in (("mlm_nomic_bert_2048", "micro-batch of 32"), ("contrastive_pretrain", "GradCache chunk of 32"),
                       ("contrastive_finetune", "GradCache chunk of 32")):
        main(["--config", str(ROOT / "configs" / f"{name}.yaml"), "--plan"])
        out = capsys.readouterr().out
        assert unit in out and "peak: fits" in out and "hours at 23% of the bf16 peak" in out, out
    main(["--config", str(ROOT / "configs" / "mlm_nomic_bert_2048.yaml"), "--plan", "a100-40gb"])
    assert "DOES NOT FIT" in capsys.readouterr().out
    expect_error(capsys, ["--config", str(TINY), "--plan", "v100"], "known: h100-80gb")
    expect_error(capsys, ["--config", str(TINY), "--plan", "--gpus", "3"], "--gpus must divide")


def wandb_history(run_file: Path) -> list[dict]:
    "The history rows of an offline W&B run file: a LevelDB-style log (32 KiB blocks, records with a 7-byte header)."
    from wandb.proto import wandb_internal_pb2
    data, rows, pending, position = run_file.read_bytes(), [], b"", 7  # after the file's header (':W&B', magic, version)
    assert data[:4] == b":W&B", run_file
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def test_trackers_hold_the_logged_scalars(tmp_path):
    "logging.report_to: TensorBoard event files, W&B's offline run and trackio's database hold each logged loss at its step."
    trackers = [name for name, module in (("tensorboard", "tensorboard"), ("wandb", "wandb"), ("trackio", "trackio"))
                if importlib.util.find_spec(module)]
    if not trackers:
        pytest.skip("no tracker installed: pip install -e '.[tracking]'")
    run = tmp_path / "tracked"
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TRACKIO_DIR": str(tmp_path / "trackio")}
    done = subprocess.run(train_cli("--config", str(TINY), *sets(*MICRO, "training.max_steps=5", "training.global_batch_size=8",
                                                              "training.micro_batch_size=4", f"output_dir={run}",
                                                              f"logging.report_to={trackers}", "logging.project=trackers-test")),
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [row["loss"] for row in read_metrics(run)[0]]
    assert len(losses) == 5
    if "tensorboard" in trackers:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        events = EventAccumulator(str(run / "tensorboard"))
        events.Reload()
        scalars = events.Scalars("train/loss")
        assert [e.step for e in scalars] == [1, 2, 3, 4, 5]
        assert all(abs(e.value - loss) <= 1e-5 * loss for e, loss in zip(scalars, losses))  # stored as float32
    if "wandb" in trackers:
        (run_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
        history = [row for row in wandb_history(run_file) if "train/loss" in row]
        assert [row["_step"] for row in history] == [1, 2, 3, 4, 5] and [row["train/loss"] for row in history] == losses
    if "trackio" in trackers:
        probe = ("import json, sys\nfrom trackio.sqlite_storage import SQLiteStorage\n"
                 "print(json.dumps(SQLiteStorage.get_logs('trackers-test', sys.argv[1])))")
        read = subprocess.run([sys.executable, "-c", probe, run.name], env=env, capture_output=True, text=True)
        logs = [row for row in json.loads(read.stdout.strip().splitlines()[-1]) if "train/loss" in row]
        assert [row["step"] for row in logs] == [1, 2, 3, 4, 5] and [row["train/loss"] for row in logs] == losses
    print(f"{', '.join(trackers)}: 5 losses read back at their steps")


def test_process_group_waits_distributed_timeout_minutes(tmp_path):
    "The process group's timeout is distributed.timeout_minutes (PyTorch's own default is 10 minutes for NCCL, 30 for gloo)."
    script = tmp_path / "timeout.py"
    script.write_text("import sys\nimport torch\nfrom nomic_embed.trainer import DistributedConfig, setup_distributed\n"
                      "setup_distributed(DistributedConfig(backend='gloo', timeout_minutes=7))\n"
                      "group = torch.distributed.distributed_c10d._get_default_group()\n"
                      "seconds = group._get_backend(torch.device('cpu')).options._timeout.total_seconds()\n"
                      "sys.stdout.write(f'{seconds}\\n')\n")  # one write per rank: lines never interleave
    done = subprocess.run([*TORCHRUN, str(script)], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [float(line) for line in done.stdout.split()] == [420.0, 420.0]


def test_prepare_a_contrastive_stage_before_its_starting_checkpoint_exists(tmp_path, capsys, monkeypatch):
    "--prepare builds stage 2's pairs while stage 1 has not finished (no init_from yet); --plan then counts the data's steps."
    from nomic_embed.cli import train as main
    monkeypatch.chdir(ROOT)  # the tiny configs' paths start at the repository root
    config = ["--config", "configs/contrastive_pretrain_tiny.yaml", "--set", f"output_dir={tmp_path / 'run'}",
              "--set", f"init_from={tmp_path / 'stage1' / 'final'}"]  # not there yet
    main(config + ["--prepare"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps_per_epoch"] >= 1 and set(summary["pairs"]) and all(n > 0 for n in summary["mean_tokens"])
    main(config + ["--plan"])
    out = capsys.readouterr().out
    assert f"run: {summary['steps_per_epoch']:,} steps (from the prepared data)" in out and "measured" in out, out
