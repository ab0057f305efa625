"""Stages 2 and 3 (chapter 09_train's contrastive stages) on real offline pairs: a tiny MLM checkpoint, contrastive
pretraining and fine-tuning improve retrieval of held-out pairs (never trained on) by a stated margin; the final model
loads with `Embedder.from_pretrained` and scores the same; resume is bitwise exact; two gloo processes under torchrun
give the losses of one process holding the global batch; the full-scale configs carry the report's settings.

Run: python -m pytest tests/test_stages.py  (add -m slow for the tiny configs end to end, mined negatives included)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from conftest import ENV, ROOT, TORCHRUN, bin_path, expect_error, sets, train_cli, weights
from nomic_embed.train import load_config, read_metrics, run_training, Trainer

CONFIGS = ROOT / "configs"
QUIET = ["logging.progress_bar=false", "logging.plot=false", "checkpoint.every_steps=1000"]
# the fast end-to-end run: three offline sources (Wikipedia heading → section, language-reference heading → text,
# WordNet same-topic pairs), short sequences, 16 pairs per batch
FAST_DATA = ["data.sources=[{name: wikipedia_sections, offline: wikipedia_sections}, {name: pydoc_topics, offline: pydoc_topics}, "
             "{name: wordnet_hypernyms, offline: wordnet_hypernyms, query_prefix: clustering}]",
             "data.query_max_length=24", "data.document_max_length=64", "data.held_out_fraction=0.1"]
# a 1-layer, 32-wide model for the process-level tests, where start-up dominates
MICRO = ["model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2", "model.intermediate_size=64",
         "model.attention_backend=sdpa", "init_from=null"]
MARGIN = 0.015  # absolute gain in held-out MRR@10 over the MLM checkpoint that the fast run must reach (measured: 0.093 → 0.117)


def eval_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir)[1] if "eval_mrr@10" in r]


def held_out_mrr(model_dir: Path, data, batch_size: int = 32) -> float:
    "MRR@10 of the held-out pairs of the config section `data`, embedded by `Embedder.from_pretrained(model_dir)` with the source prefixes."
    from nomic_embed.embed import Embedder
    from nomic_embed.train import held_out_corpus, pair_splits, retrieval_metrics
    embedder = Embedder.from_pretrained(model_dir, device="cpu")
    train, held_out, prefixes = pair_splits(data)
    total, count = 0.0, 0
    for name, rows in held_out.items():
        corpus, relevant, _ = held_out_corpus(train[name], rows, rows)
        query_task, document_task = prefixes[name]
        queries = embedder.encode([r["query"] for r in rows], query_task, batch_size=batch_size, max_length=data.query_max_length)
        documents = embedder.encode(corpus, document_task, batch_size=batch_size, max_length=data.document_max_length)
        total += float(retrieval_metrics(torch.from_numpy(queries), torch.from_numpy(documents), relevant)["mrr"].sum())
        count += len(rows)
    return total / count


@pytest.fixture(scope="module")
def mlm_checkpoint(tmp_path_factory) -> Path:
    "A tiny MLM checkpoint: configs/mlm_tiny.yaml's model and recipe, 10 steps of 8 chunks (the slow test trains the full 400)."
    run = tmp_path_factory.mktemp("mlm") / "run"
    run_training(CONFIGS / "mlm_tiny.yaml", [f"output_dir={run}", "training.max_steps=10", "training.global_batch_size=8",
                                             "training.micro_batch_size=8", "logging.eval_every_steps=0", "data.val_fraction=0"] + QUIET)
    return run / "final"


def test_pretrain_and_finetune_improve_held_out_retrieval(mlm_checkpoint, tmp_path):
    pretrain, finetune = tmp_path / "pretrain", tmp_path / "finetune"
    run_training(CONFIGS / "contrastive_pretrain_tiny.yaml", FAST_DATA + QUIET + [
        f"output_dir={pretrain}", f"init_from={mlm_checkpoint}", "training.max_steps=30", "training.num_epochs=null",
        "training.global_batch_size=16", "contrastive.gradcache_chunk_size=8", "schedule.warmup_steps=5", "logging.eval_every_steps=0"])
    run_training(CONFIGS / "contrastive_finetune_tiny.yaml", FAST_DATA + QUIET + [
        f"output_dir={finetune}", f"init_from={pretrain / 'final'}", "data.mine_negatives=random", "data.num_negatives=3",
        "data.random_negatives_sources=[]", "training.max_steps=8", "training.num_epochs=null", "training.global_batch_size=16",
        "contrastive.gradcache_chunk_size=16", "schedule.warmup_steps=2"])
    (mlm, pretrained), (start, finetuned) = eval_rows(pretrain), eval_rows(finetune)
    for name, row in (("MLM checkpoint", mlm), ("after pretraining", pretrained), ("after fine-tuning", finetuned)):
        print(f"{name:>18}: MRR@10 {row['eval_mrr@10']:.3f}  nDCG@10 {row['eval_ndcg@10']:.3f}  recall@10 {row['eval_recall@10']:.3f}"
              f"  ({row['eval_queries']} held-out queries)")
    assert mlm["step"] == 0 and pretrained["step"] == 30 and finetuned["step"] == 8
    assert mlm["eval_queries"] == finetuned["eval_queries"] > 50
    assert pretrained["eval_mrr@10"] >= mlm["eval_mrr@10"] + MARGIN
    assert finetuned["eval_mrr@10"] >= mlm["eval_mrr@10"] + MARGIN
    assert finetuned["eval_ndcg@10"] > mlm["eval_ndcg@10"] + MARGIN
    # fine-tuning starts from exactly the model pretraining saved
    assert abs(start["eval_mrr@10"] - pretrained["eval_mrr@10"]) < 1e-9 and abs(start["eval_loss"] - pretrained["eval_loss"]) < 1e-5

    # the final model is in the model chapter's format: Embedder.from_pretrained loads it and retrieves the same
    embedder_mrr = held_out_mrr(finetune / "final", load_config(finetune / "config.yaml").data)
    print(f"Embedder.from_pretrained(final): MRR@10 {embedder_mrr:.4f} (the trainer's evaluation: {finetuned['eval_mrr@10']:.4f})")
    assert abs(embedder_mrr - finetuned["eval_mrr@10"]) < 2e-3
    # with the trainer's evaluation batch size the Embedder runs the very same batches: the same number to 1e-6
    config = load_config(finetune / "config.yaml")
    exact_mrr = held_out_mrr(finetune / "final", config.data, batch_size=config.logging.eval_batch_size)
    assert abs(exact_mrr - finetuned["eval_mrr@10"]) < 1e-6, (exact_mrr, finetuned["eval_mrr@10"])


def test_contrastive_resume_is_bitwise_exact(tmp_path):
    "Stage 3 with random negatives and three different random streams, stopped at step 2 and resumed: bitwise the same."
    common = MICRO + QUIET + ["data.sources=[{name: pydoc_topics, offline: pydoc_topics}]", "data.query_max_length=16",
                              "data.document_max_length=32", "data.held_out_fraction=0", "training.max_steps=4",
                              "training.num_epochs=null", "training.global_batch_size=8", "contrastive.gradcache_chunk_size=4",
                              "checkpoint.every_steps=2", "checkpoint.keep_last=5", "schedule.warmup_steps=1",
                              "contrastive.learnable_scale=true",  # the learned scale is checkpointed with the model
                              "data.mine_negatives=random", "data.num_negatives=2", "data.random_negatives_sources=[]",
                              "init_seed=3", "data_seed=5", "negative_seed=7"]
    config = CONFIGS / "contrastive_finetune_tiny.yaml"
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_training(config, common + [f"output_dir={straight}"])
    first = Trainer(load_config(config, common + [f"output_dir={split}"]))
    first.total_steps = 2  # stop early, as a crash would (the schedule still spans 4 steps)
    first.train()
    resumed = Trainer(load_config(config, common + [f"output_dir={split}"]), resume=split)
    assert resumed.step == 2
    resumed.train()
    a, b = weights(straight, 4), weights(split, 4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    assert "logit_scale.log_scale" in a
    assert [r["loss"] for r in read_metrics(straight)[0]] == [r["loss"] for r in read_metrics(split)[0]]


def test_random_streams_change_only_what_they_seed(tmp_path):
    "init_seed moves only the initial weights, data_seed only the batches, negative_seed only the negatives (stage 3)."
    from nomic_embed.trainer import TrainingSetup
    common = MICRO + QUIET + ["data.sources=[{name: pydoc_topics, offline: pydoc_topics}]", "data.query_max_length=16",
                              "data.document_max_length=32", "data.held_out_fraction=0", "training.max_steps=4",
                              "training.num_epochs=null", "training.global_batch_size=8", "data.mine_negatives=random",
                              "data.num_negatives=2", "data.random_negatives_sources=[]"]

    def build(*overrides: str) -> tuple[dict, list]:
        setup = TrainingSetup(load_config(CONFIGS / "contrastive_finetune_tiny.yaml", [*common, *overrides,
                                                                                      f"output_dir={tmp_path / 'run'}"]))
        setup.release()
        return setup.model.state_dict(), [setup.stage.micro_batches(step)[0] for step in range(4)]

    def same(a: dict, b: dict, keys=None) -> bool:
        return all(torch.equal(a[k], b[k]) for k in (keys or a))

    def same_sides(a: list, b: list, sides: tuple) -> bool:
        return all(same(x[side], y[side]) for x, y in zip(a, b) for side in sides)

    weights0, batches0 = build()
    init_weights, init_batches = build("init_seed=1")
    data_weights, data_batches = build("data_seed=1")
    negative_weights, negative_batches = build("negative_seed=1")
    everything = ("query", "document", "negatives")
    assert not same(weights0, init_weights) and same_sides(batches0, init_batches, everything)
    assert same(weights0, data_weights) and not same_sides(batches0, data_batches, ("query", "document"))
    assert same(weights0, negative_weights) and same_sides(batches0, negative_batches, ("query", "document"))
    assert not same_sides(batches0, negative_batches, ("negatives",))
    assert not (tmp_path / "run").exists()  # built, never trained: nothing left behind


def torchrun_matches_single_process(tmp_path: Path, config: Path, extra: list[str]) -> None:
    common = MICRO + QUIET + extra + ["data.sources=[{name: pydoc_topics, offline: pydoc_topics}]", "data.query_max_length=16",
                                      "data.document_max_length=32", "data.held_out_fraction=0", "training.max_steps=3",
                                      "training.num_epochs=null", "training.global_batch_size=8", "contrastive.gradcache_chunk_size=2",
                                      "schedule.warmup_steps=1", "distributed.backend=gloo"]
    single, double = tmp_path / "single", tmp_path / "double"
    one = subprocess.run(train_cli("--config", str(config), *sets(*common, f"output_dir={single}")), env=ENV, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([*TORCHRUN, "--no-python", bin_path("nomic_embed_train"), "--config", str(config), *sets(*common, f"output_dir={double}")],
                         env=ENV, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    one_rows, two_rows = read_metrics(single)[0], read_metrics(double)[0]
    assert [r["step"] for r in one_rows] == [r["step"] for r in two_rows] == [1, 2, 3]
    differences = [abs(a["loss"] - b["loss"]) for a, b in zip(one_rows, two_rows)]
    print("per-step |Δloss| 1 vs 2 processes:", [f"{d:.1e}" for d in differences], "losses:", [round(r["loss"], 4) for r in one_rows])
    assert max(differences) <= 1e-5
    assert [r["tokens"] for r in one_rows] == [r["tokens"] for r in two_rows]
    if "contrastive.learnable_scale=true" in extra:  # the learned 1/τ moves, identically in both runs
        scales = [(a["logit_scale"], b["logit_scale"]) for a, b in zip(one_rows, two_rows)]
        print("learned logit scale per step (1 vs 2 processes):", scales)
        assert all(abs(a - b) < 1e-4 for a, b in scales) and abs(scales[-1][0] - 50.0) > 1e-3
    wa, wb = weights(single, 3), weights(double, 3)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


def test_torchrun_finetune_matches_single_process(tmp_path):
    "Eq. 2 with 2 random negatives per query, GradCache chunks of 2, learnable logit scale: 2 gloo processes × 4 queries = 1 process × 8."
    torchrun_matches_single_process(tmp_path, CONFIGS / "contrastive_finetune_tiny.yaml",
                                    ["data.mine_negatives=random", "data.num_negatives=2", "data.random_negatives_sources=[]",
                                     "contrastive.learnable_scale=true", "optimizer.lr=0.05"])


@pytest.mark.slow
def test_torchrun_pretrain_matches_single_process(tmp_path):
    "Eq. 1 (in-batch negatives only), documents gathered across the 2 processes with their gradient."
    torchrun_matches_single_process(tmp_path, CONFIGS / "contrastive_pretrain_tiny.yaml", [])


def test_full_scale_configs_carry_the_report_settings(monkeypatch):
    monkeypatch.chdir(ROOT)  # pairs_config paths start at the repository root
    pretrain = load_config(CONFIGS / "contrastive_pretrain.yaml")
    assert pretrain.stage == "contrastive_pretrain" and pretrain.init_from
    assert (pretrain.training.global_batch_size, pretrain.contrastive.gradcache_chunk_size) == (16384, 32)  # 32 fits 80 GB
    assert (pretrain.optimizer.lr, pretrain.optimizer.betas, pretrain.optimizer.weight_decay) == (2e-4, [0.9, 0.999], 0.01)
    assert (pretrain.schedule.name, pretrain.schedule.warmup_steps, pretrain.training.max_grad_norm) == ("inverse_sqrt", 700, 1.0)
    assert (pretrain.data.query_max_length, pretrain.data.document_max_length, pretrain.training.num_epochs) == (2048, 2048, 1)
    assert (pretrain.contrastive.logit_scale, pretrain.contrastive.bidirectional, pretrain.data.num_negatives) == (50.0, False, 0)
    assert len(pretrain.data.sources) == 29 and all(s["path"] == "nomic-ai/nomic-embed-unsupervised-data" for s in pretrain.data.sources)
    finetune = load_config(CONFIGS / "contrastive_finetune.yaml")
    assert finetune.stage == "contrastive_finetune"
    assert (finetune.training.global_batch_size, finetune.data.num_negatives, finetune.data.negatives_pool) == (256, 7, 20)
    assert (finetune.optimizer.lr, finetune.optimizer.betas, finetune.optimizer.weight_decay) == (2e-5, [0.9, 0.999], 0.01)
    assert (finetune.schedule.name, finetune.schedule.warmup_steps, finetune.training.max_grad_norm) == ("linear", 400, 1.0)
    assert (finetune.data.query_max_length, finetune.data.document_max_length, finetune.training.num_epochs) == (2048, 2048, 1)
    assert len(finetune.data.sources) == 10


@pytest.mark.parametrize("overrides, message", [
    (["data.sources=[{name: a, offline: pydoc_topics, query_prefix: search}]"], "search_query, search_document, classification, clustering"),
    (["data.sources=[{name: a, offline: pydoc_topics, prefix: search_query}]"], "unknown key(s) prefix"),
    (["data.mine_negatives=hard"], "data.mine_negatives must be null, mined or random"),
    (["data.random_negatives_sources=[reddit]"], "unknown source(s) ['reddit']"),
    (["data.pairs_config=configs/no_such_pairs.yaml", "data.sources=null"], "does not exist"),
    (["data.num_negatives=0"], "needs hard negatives"),
    (["contrastive.gradcache=false", "training.micro_batch_size=8"], "training.micro_batch_size"),
    (["distributed.deepspeed=configs/deepspeed_zero2_mlm.json", "contrastive.learnable_scale=true"], "distributed.deepspeed: null"),
])
def test_bad_contrastive_configs_fail_before_any_work(tmp_path, capsys, overrides, message):
    expect_error(capsys, ["--config", str(CONFIGS / "contrastive_finetune_tiny.yaml"), *sets(f"output_dir={tmp_path / 'run'}", *overrides)], message)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_tiny_configs_end_to_end(tmp_path, monkeypatch):
    "configs/mlm_tiny.yaml → contrastive_pretrain_tiny.yaml → contrastive_finetune_tiny.yaml (mined negatives), as written."
    monkeypatch.chdir(tmp_path)  # the configs' relative paths (runs/...) land here
    runs = tmp_path / "runs"
    run_training(CONFIGS / "mlm_tiny.yaml", QUIET)
    run_training(CONFIGS / "contrastive_pretrain_tiny.yaml", QUIET)
    run_training(CONFIGS / "contrastive_finetune_tiny.yaml", QUIET)
    pre, fine = eval_rows(runs / "contrastive_pretrain_tiny"), eval_rows(runs / "contrastive_finetune_tiny")
    for row in pre + fine:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    assert pre[-1]["eval_mrr@10"] >= pre[0]["eval_mrr@10"] + 0.1  # stage 2 vs the MLM checkpoint, six sources
    data = load_config(runs / "contrastive_finetune_tiny" / "config.yaml").data
    mlm, final = held_out_mrr(runs / "mlm_tiny" / "final", data), held_out_mrr(runs / "contrastive_finetune_tiny" / "final", data)
    print(f"held-out MRR@10 on the fine-tuning sources: MLM checkpoint {mlm:.3f}, after stages 2 and 3 {final:.3f}")
    assert final >= mlm + 0.1
