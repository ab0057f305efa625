"""DeepSpeed ZeRO-2 on 2 CPU ranks (gloo, DeepSpeed's CPU accelerator), as stage 1 runs it at full scale:
the same losses as plain DDP, checkpoints that save and load (ZeRO turns every parameter into a view of one flat
buffer, and the MLM decoder is tied to the word embeddings), an exact resume after kill -9, and under bf16 the
fp32 master weights, not the module's bf16 copies, in checkpoints and `final/`.

Real text: configs/mlm_tiny.yaml's offline sources (Wikipedia sample, Python docs, WordNet, dictionaries), a
1-layer 32-wide model. Skipped only where DeepSpeed is not installed (`pip install -e ".[deepspeed]"`)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: pip install -e '.[deepspeed]' (see tools/setup.sh)")

from conftest import ENV, ROOT, TORCHRUN, sets, weights  # noqa: E402
from nomic_embed.trainer import read_metrics  # noqa: E402

TINY = ROOT / "configs" / "mlm_tiny.yaml"
ZERO2 = ROOT / "configs" / "deepspeed_zero2_mlm.json"
MICRO = ["model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2", "model.intermediate_size=64",
         "logging.eval_every_steps=0", "logging.eval_max_chunks=64", "logging.progress_bar=false", "logging.plot=false",
         "training.global_batch_size=8", "training.micro_batch_size=2", "distributed.backend=gloo"]  # 2 accumulation steps


@pytest.fixture(scope="module", autouse=True)
def corpus_cache():
    "Build the tiny config's packed corpus once (in-process) so the ranks only read the cache."
    from nomic_embed.corpus import packed_corpus
    from nomic_embed.train import load_config
    config = load_config(TINY)
    packed_corpus(config.data, "train", progress=False)
    packed_corpus(config.data, "validation", progress=False)


def torchrun_train(*args: str) -> list[str]:
    "The trainer under torchrun on 2 CPU ranks."
    return [*TORCHRUN, "-m", "nomic_embed.train", *args]


def losses(run_dir: Path) -> list[float]:
    "Training loss per step of a run."
    return [row["loss"] for row in read_metrics(run_dir)[0]]


@pytest.mark.slow
def test_zero2_matches_ddp_and_resumes_bit_for_bit(tmp_path):
    "ZeRO-2 vs DDP on 2 ranks: the same loss at every step (1e-6); kill -9 after a checkpoint, --resume: bitwise equal."
    steps, every = 12, 3
    common = MICRO + [f"training.max_steps={steps}", f"checkpoint.every_steps={every}", "checkpoint.keep_last=10"]
    ddp, zero2, victim = tmp_path / "ddp", tmp_path / "zero2", tmp_path / "victim"
    ds = f"distributed.deepspeed={ZERO2}"
    for run, extra in ((ddp, []), (zero2, [ds])):
        done = subprocess.run(torchrun_train("--config", str(TINY), *sets(*common, *extra, f"output_dir={run}")),
                              env=ENV, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    differences = [abs(a - b) for a, b in zip(losses(ddp), losses(zero2))]
    print("per-step |loss DDP - loss ZeRO-2|:", [f"{d:.1e}" for d in differences])
    assert len(differences) == steps and max(differences) <= 1e-6
    a, b = weights(ddp, steps), weights(zero2, steps)
    assert a.keys() == b.keys() and "cls.predictions.decoder.weight" not in a  # the tied decoder once, as DDP writes it
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5

    process = subprocess.Popen(torchrun_train("--config", str(TINY), *sets(*common, ds, f"output_dir={victim}")), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics, deadline = victim / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and process.poll() is None:  # kill once a checkpoint exists and training moved past it
        if metrics.exists() and len(metrics.read_text().splitlines()) >= every + 2:
            break
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both ranks
    process.wait()
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
    assert every < max(logged) < steps and not (victim / "final").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(torchrun_train("--resume", str(victim)), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(zero2, steps), weights(victim, steps)
    assert all(torch.equal(a[k], b[k]) for k in a), "ZeRO-2 weights after kill + resume differ from the uninterrupted run"
    assert losses(zero2) == losses(victim) and [r["step"] for r in read_metrics(victim)[0]] == list(range(1, steps + 1))
    from safetensors.torch import load_file
    final = load_file(victim / "final" / "model.safetensors")  # the encoder and the MLM head, fp32, equal to the last checkpoint
    assert final.keys() == b.keys() and all(final[k].dtype == torch.float32 and torch.equal(final[k], b[k]) for k in b)
    print(f"killed after step {max(logged)}: resumed; {len(a)} tensors bitwise equal, {steps} losses equal")


BF16_SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import torch
    import deepspeed
    from nomic_embed.corpus import CorpusConfig, load_tokenizer, packed_corpus
    from nomic_embed.mlm import MaskingConfig, MLMBatches, SpecialTokens
    from nomic_embed.model import NomicBertConfig, NomicBertForPreTraining
    from nomic_embed.trainer import (OptimizerConfig, DistInfo, build_optimizer, holding_weights, load_checkpoint,
                                     model_state, save_checkpoint)
    out = Path(sys.argv[1])
    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    dist = DistInfo(rank, world, rank, torch.device("cpu"))
    tokenizer = load_tokenizer()
    chunks = packed_corpus(CorpusConfig(chunk_length=64), "train", tokenizer, progress=False)  # real text
    batches = MLMBatches(chunks, SpecialTokens.from_tokenizer(tokenizer), MaskingConfig(), 0, 4, 2, rank, world)
    def engine_for(seed):
        torch.manual_seed(seed)
        model = NomicBertForPreTraining(NomicBertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                        intermediate_size=64))
        config = json.loads(Path(sys.argv[2]).read_text())
        config.update(train_batch_size=4, train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=1)
        config["bf16"]["enabled"] = True  # the module's parameters become bf16, the masters stay fp32 in the optimiser
        engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, OptimizerConfig(lr=1e-2)),
                                          config=config)
        return model, engine
    model, engine = engine_for(0)
    for step in range(3):
        (batch,) = batches.micro_batches(step)
        engine.backward(engine(batch["input_ids"], labels=batch["labels"]).loss)
        engine.step()
    masters = model_state(model, engine)  # every rank takes part in the gather
    embeddings = model.bert.embeddings.word_embeddings.weight
    report = {"param_dtype": str(embeddings.dtype), "master_dtypes": sorted({str(t.dtype) for t in masters.values()}),
              "masters_round_to_module": all(torch.equal(masters[n].bfloat16(), p.detach())
                                             for n, p in model.named_parameters()),
              "masters_differ_from_module": sum(int(not torch.equal(masters[n], p.detach().float()))
                                                for n, p in model.named_parameters())}
    checkpoint = save_checkpoint(out / "run", 3, model, None, None, {"step": 3, "world_size": world, "config": {"seed": 0}}, dist, 1,
                                 lambda tmp: engine.save_checkpoint(str(tmp / "deepspeed"), tag="state"), engine)
    with holding_weights(model, masters):
        if rank == 0:
            model.save_pretrained(out / "final")
    report["module_back_to_bf16"] = str(model.bert.embeddings.word_embeddings.weight.dtype)
    model_b, engine_b = engine_for(1)  # other weights: the load must replace them all
    engine_b.load_checkpoint(str(checkpoint / "deepspeed"), tag="state")
    load_checkpoint(checkpoint, model_b, None, None, dist)
    reloaded = model_state(model_b, engine_b)
    report["reloaded_masters_equal"] = all(torch.equal(reloaded[k], masters[k]) for k in masters)
    report["reloaded_module_equal"] = all(torch.equal(a, b) for a, b in zip(model.parameters(), model_b.parameters()))
    if rank == 0:
        (out / "report.json").write_text(json.dumps(report))
        torch.save(masters, out / "masters.pt")
''')


def test_bf16_checkpoints_and_final_hold_the_fp32_master_weights(tmp_path):
    "DeepSpeed bf16 ZeRO-2 on 2 ranks: checkpoint and final/ hold the fp32 masters gathered from both shards; they reload exactly."
    script = tmp_path / "bf16_masters.py"
    script.write_text(BF16_SCRIPT)
    done = subprocess.run([*TORCHRUN, str(script), str(tmp_path), str(ZERO2)], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    print(report)
    assert report["param_dtype"] == "torch.bfloat16" and report["master_dtypes"] == ["torch.float32"]
    assert report["masters_round_to_module"] and report["masters_differ_from_module"] > 0
    assert report["module_back_to_bf16"] == "torch.bfloat16"
    assert report["reloaded_masters_equal"] and report["reloaded_module_equal"]
    from safetensors.torch import load_file
    masters = torch.load(tmp_path / "masters.pt", weights_only=True)
    for saved in (load_file(tmp_path / "run" / "checkpoints" / "step-000003" / "model.safetensors"),
                  load_file(tmp_path / "final" / "model.safetensors")):
        assert saved.keys() == masters.keys()
        assert all(saved[k].dtype == torch.float32 and torch.equal(saved[k], masters[k]) for k in masters)
