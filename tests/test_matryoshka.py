"""Matryoshka embeddings (chapters 04_contrastive, 05_gradcache, 09a_train, 10_embed) and fine-tuning on your own pairs.

- GradCache + the Matryoshka loss gives the gradient of plain full-batch back-propagation (1e-5, relative), with and
  without v1.5's layer norm and hard negatives; two gloo processes under torchrun equal one process holding the batch.
- configs/finetune_own_pairs_tiny.yaml end to end on real offline pairs written as "your own" JSONL: started from a
  checkpoint in the released layout with nomic-embed-text-v1.5's config fields, held-out retrieval logged before
  (step 0) and after and better after, the result exported in every format, each of which loads back with the same
  vectors at every Matryoshka size (sentence-transformers' too, at `truncate_dim`).
- Bad input fails before training with exit status 2 and a message naming the problem: missing columns, empty texts,
  missing negatives, a checkpoint of another architecture, prefix sizes beyond the hidden size.

Run: python -m pytest tests/test_matryoshka.py"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ENV, ROOT, TORCHRUN, expect_error, sets, train_cli

from nomic_embed.contrastive import info_nce_loss, matryoshka_info_nce_loss
from nomic_embed.gradcache import MeanPooledEncoder, gradcache_step

sys.path.insert(0, str(ROOT / "benchmarks"))  # the measuring helpers the benchmarks share
from benchtools import gradient_vector, relative_error  # noqa: E402
from test_contrastive import global_batch, tiny_model  # noqa: E402  (real pydoc pairs, the tiny NomicBERT)

DIMS = (128, 64, 32, 16)  # the tiny model's hidden size down to an eighth of it
TINY_CONFIG = ROOT / "configs" / "finetune_own_pairs_tiny.yaml"
QUIET = ["logging.progress_bar=false", "logging.plot=false"]


# ---------------------------------------------------------------- GradCache stays exact
@pytest.mark.parametrize("with_negatives", [False, True])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_gradcache_matryoshka_matches_full_batch(with_negatives, layer_norm):
    model = tiny_model()
    batch = global_batch(16, negatives=with_negatives)
    loss_fn = partial(matryoshka_info_nce_loss, dims=DIMS, layer_norm=layer_norm)
    plain, cached = MeanPooledEncoder(copy.deepcopy(model)), MeanPooledEncoder(copy.deepcopy(model))
    plain_loss = gradcache_step(plain, batch, loss_fn, chunk_size=None)
    cached_loss = gradcache_step(cached, batch, loss_fn, chunk_size=3)  # uneven chunks on purpose
    error = relative_error(gradient_vector(cached), gradient_vector(plain))
    print(f"negatives={with_negatives} layer_norm={layer_norm}: loss {plain_loss.item():.6f} vs {cached_loss.item():.6f}, "
          f"relative gradient difference {error:.2e}")
    assert abs(plain_loss.item() - cached_loss.item()) <= 1e-5 * abs(plain_loss.item())
    assert error <= 1e-5, f"GradCache + Matryoshka gradient differs from plain back-propagation by {error:.2e} (relative)"


def test_matryoshka_gradient_is_the_sum_of_the_prefix_gradients():
    "∂L/∂e (what GradCache caches) = Σ_k ∂L_k/∂e, each zero beyond its prefix (float64, random tensors: arithmetic)."
    generator = torch.Generator().manual_seed(0)
    queries, documents = (torch.randn(8, 128, dtype=torch.float64, generator=generator) for _ in range(2))
    def gradient(loss_fn):
        q = queries.clone().requires_grad_()
        loss_fn(q, documents).backward()
        return q.grad
    total = gradient(lambda q, d: matryoshka_info_nce_loss(q, d, dims=DIMS, weights=[1.0, 0.5, 0.25, 2.0]))
    parts = [w * gradient(lambda q, d, k=k: info_nce_loss(q[:, :k], d[:, :k])) for k, w in zip(DIMS, [1.0, 0.5, 0.25, 2.0])]
    torch.testing.assert_close(total, sum(parts), rtol=1e-12, atol=1e-14)
    for k, part in zip(DIMS, parts):
        assert part[:, k:].abs().sum() == 0 and part[:, :k].abs().sum() > 0


WORKER = r"""
import os, sys, torch, torch.distributed as dist
from functools import partial
from torch.nn.parallel import DistributedDataParallel
sys.path.insert(0, TESTS_DIR)
from test_contrastive import NUM_NEGATIVES, global_batch, rows, tiny_model
from nomic_embed.contrastive import matryoshka_info_nce_loss
from nomic_embed.gradcache import MeanPooledEncoder, gradcache_step
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(1)
encoder = DistributedDataParallel(MeanPooledEncoder(tiny_model()))
full = global_batch()
local = len(full["query"]["input_ids"]) // world
results = {}
for name, options in CASES.items():
    batch = rows(full, rank * local, (rank + 1) * local)
    if not options.pop("negatives"):
        batch.pop("negatives")
    for chunk_size in (None, 2):
        encoder.zero_grad(set_to_none=True)
        loss = gradcache_step(encoder, batch, partial(matryoshka_info_nce_loss, dims=DIMS, **options), chunk_size=chunk_size)
        dist.all_reduce(loss)
        results[f"{name}/{chunk_size}"] = {"loss": (loss / world).item(), "grads": {n: p.grad.clone() for n, p in encoder.module.named_parameters()}}
torch.save(results, os.path.join(OUT_DIR, f"rank{rank}.pt"))
dist.destroy_process_group()
"""
CASES = {"matryoshka": {"negatives": False}, "matryoshka_layer_norm_eq2": {"negatives": True, "layer_norm": True},
         "matryoshka_shared_negatives": {"negatives": True, "shared_negatives": True}}


def test_distributed_matryoshka_matches_single_process(tmp_path):
    "torchrun --nproc_per_node=2 (gloo, DDP): the Matryoshka loss and its DDP-averaged gradients equal one process holding the global batch."
    script = tmp_path / "worker.py"
    script.write_text(WORKER.replace("TESTS_DIR", repr(str(ROOT / "tests"))).replace("OUT_DIR", repr(str(tmp_path)))
                      .replace("CASES", repr(CASES)).replace("DIMS", repr(DIMS)))
    done = subprocess.run([*TORCHRUN, str(script)], capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, options in CASES.items():
        options = dict(options)
        batch = global_batch(negatives=options.pop("negatives"))
        single = MeanPooledEncoder(tiny_model())
        loss = gradcache_step(single, batch, partial(matryoshka_info_nce_loss, dims=DIMS, **options), chunk_size=None)
        reference = torch.cat([p.grad.flatten() for _, p in single.named_parameters()])
        for chunk_size in (None, 2):
            result = ranks[0][f"{name}/{chunk_size}"]
            assert abs(result["loss"] - loss.item()) <= 1e-5 * abs(loss.item()), (name, chunk_size)
            for rank in ranks:  # DDP leaves the same averaged gradient on every rank
                averaged = torch.cat([g.flatten() for g in rank[f"{name}/{chunk_size}"]["grads"].values()])
                error = relative_error(averaged, reference)
                assert error <= 1e-5, f"{name}, chunk {chunk_size}: relative gradient difference {error:.2e}"


# ---------------------------------------------------------------- fine-tuning on your own pairs, end to end
V15_RELEASED_FIELDS = {  # nomic-embed-text-v1.5's released config.json beyond what the model reads (sizes come from the model)
    "activation_function": "swiglu", "architectures": ["NomicBertModel"], "attn_pdrop": 0.0,
    "auto_map": {"AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
                 "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel",
                 "AutoModelForMaskedLM": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertForPreTraining"},
    "bos_token_id": None, "causal": False, "dense_seq_output": True, "embd_pdrop": 0.0, "eos_token_id": None,
    "fused_bias_fc": True, "fused_dropout_add_ln": True, "model_type": "nomic_bert", "pad_vocab_size_multiple": 64,
    "parallel_block": False, "parallel_block_tied_norm": False, "prenorm": False, "qkv_proj_bias": False,
    "reorder_and_upcast_attn": False, "rotary_emb_fraction": 1.0, "rotary_emb_interleaved": False, "rotary_emb_scale_base": None,
    "rotary_scaling_factor": None, "scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True, "summary_activation": None,
    "summary_first_dropout": 0.0, "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True,
    "torch_dtype": "float32", "use_cache": True, "use_flash_attn": True, "use_rms_norm": False, "use_xentropy": True,
}


@pytest.fixture(scope="module")
def v15_start(tmp_path_factory) -> Path:
    "A tiny starting checkpoint (hidden 128, one layer) in the released layout with nomic-embed-text-v1.5's config fields."
    from nomic_embed.corpus import load_tokenizer
    from nomic_embed.checkpoints import save_model
    from nomic_embed.model import NomicBertConfig, NomicBertModel
    path = tmp_path_factory.mktemp("start") / "nomic-embed-text-v1.5-tiny"
    torch.manual_seed(0)
    save_model(NomicBertModel(NomicBertConfig(hidden_size=128, num_hidden_layers=1, num_attention_heads=2, intermediate_size=512)), path,
               format="nomic")
    config = json.loads((path / "config.json").read_text())
    (path / "manifest.json").unlink(missing_ok=True)  # the released download has no manifest
    (path / "config.json").write_text(json.dumps(V15_RELEASED_FIELDS | config, indent=2))
    load_tokenizer().save_pretrained(path)
    return path


def own_pairs(path: Path, n: int = 240, **columns) -> Path:
    "Real offline pairs (Python name → docstring, a training-side source) written as a user's JSONL file."
    from nomic_embed.pairs import offline_pairs
    rows = offline_pairs(["python_docstrings"])["python_docstrings"][:n]
    names = {"query": "query", "document": "document"} | columns
    path.write_text("".join(json.dumps({names["query"]: r["query"], names["document"]: r["document"]}) + "\n" for r in rows))
    return path


def source(data_file: Path, **extra) -> str:
    fields = ", ".join([f"name: own_pairs, data_files: {data_file}", *(f"{k}: {v}" for k, v in extra.items())])
    return f"data.sources=[{{{fields}}}]"


def test_finetune_own_pairs_end_to_end(v15_start, tmp_path):
    from nomic_embed.embed import EXPORT_FORMATS, Embedder
    from nomic_embed.train import read_metrics
    from sentence_transformers import SentenceTransformer
    pairs = own_pairs(tmp_path / "own_pairs.jsonl", n=400)
    run = tmp_path / "run"
    env = ENV | {"NOMIC_EMBED_CACHE": str(tmp_path / "cache")}  # the mined negatives are cached here, not in the user's cache
    done = subprocess.run(train_cli("--config", str(TINY_CONFIG), *sets(f"init_from={v15_start}", source(pairs), f"output_dir={run}", *QUIET)),
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    evals = [row for row in read_metrics(run)[1] if "eval_mrr@10" in row]
    print(f"held-out MRR@10: {evals[0]['eval_mrr@10']:.3f} at step 0 (the start), {evals[-1]['eval_mrr@10']:.3f} after "
          f"{evals[-1]['step']} steps ({evals[-1]['eval_queries']} queries)")
    assert evals[0]["step"] == 0 and evals[-1]["step"] > 0
    assert evals[-1]["eval_mrr@10"] > evals[0]["eval_mrr@10"] + 0.1
    assert json.loads((run / "final" / "config.json").read_text())["matryoshka_layer_norm"] is True
    assert len(list((tmp_path / "cache" / "negatives").glob("mined-20-*.jsonl"))) == 1  # mined by the offline teacher

    tuned = Embedder.from_pretrained(run / "final", device="cpu")
    assert tuned.matryoshka_layer_norm
    texts = [json.loads(line)["document"] for line in pairs.read_text().splitlines()[:12]]
    reference = {d: tuned.encode(texts, "search_document", dimensionality=d, max_length=64) for d in DIMS}
    (tmp_path / "exports").mkdir()
    for format in EXPORT_FORMATS:
        exported = tuned.save_pretrained(tmp_path / "exports" / format, format=format)
        again = Embedder.from_pretrained(exported, device="cpu")
        assert again.matryoshka_layer_norm, format
        for d in DIMS:
            np.testing.assert_allclose(again.encode(texts, "search_document", dimensionality=d, max_length=64), reference[d], atol=1e-5)
    st = SentenceTransformer(str(tmp_path / "exports" / "sentence_transformers"), device="cpu")
    st.max_seq_length = 64  # the length the vectors above were cut at
    for d in DIMS:
        theirs = st.encode(["search_document: " + t for t in texts], truncate_dim=d, normalize_embeddings=True)
        np.testing.assert_allclose(theirs, reference[d], atol=1e-5)


# ---------------------------------------------------------------- bad input fails before training
def bad_source_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    renamed = own_pairs(tmp_path / "renamed.jsonl", n=40, query="question", document="answer")
    blank = tmp_path / "blank.jsonl"
    rows = [json.loads(line) for line in own_pairs(tmp_path / "rows.jsonl", n=40).read_text().splitlines()]
    rows[7]["document"] = "   "
    blank.write_text("".join(json.dumps(r) + "\n" for r in rows))
    no_document = tmp_path / "no_document.jsonl"
    rows[7] = {"query": rows[7]["query"]}
    no_document.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "missing columns": ([source(renamed)], "source 'own_pairs' has no 'query' column (its columns: question, answer); map your column names"),
        "mapped columns are fine until the model": ([source(renamed, columns="{query: question, document: answer}"), "contrastive.matryoshka_dims=[256, 128]"],
                                                    "contrastive.matryoshka_dims [256] exceed the model's hidden size 128"),
        "blank document": ([source(blank)], "source 'own_pairs', row 7: 'document' is missing, empty or not text"),
        "missing document": ([source(no_document)], "source 'own_pairs', row 7: 'document' is missing, empty or not text"),
        "no negatives to sample": ([source(own_pairs(tmp_path / "plain.jsonl", n=40)), "data.mine_negatives=null"],
                                   "source 'own_pairs' has no 'negatives' column"),
    }


@pytest.mark.parametrize("case", ["missing columns", "mapped columns are fine until the model", "blank document", "missing document",
                                  "no negatives to sample"])
def test_bad_own_pairs_fail_before_training(v15_start, tmp_path, capsys, case):
    overrides, message = bad_source_cases(tmp_path)[case]
    run = tmp_path / "run"
    expect_error(capsys, ["--config", str(TINY_CONFIG), *sets(f"init_from={v15_start}", f"output_dir={run}", *overrides, *QUIET)], message)
    assert not (run / "checkpoints").exists() and not (run / "final").exists() and not (run / "metrics.jsonl").exists()


def test_checkpoint_of_another_architecture_fails_before_any_data_is_read(tmp_path, capsys):
    bert = tmp_path / "bert-base-uncased"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12}))
    missing = tmp_path / "not-there.jsonl"  # never opened: the checkpoint fails first
    expect_error(capsys, ["--config", str(TINY_CONFIG), *sets(f"init_from={bert}", source(missing), f"output_dir={tmp_path / 'run'}")],
                 "config.json with model_type='bert' is not a NomicBERT checkpoint")
    expect_error(capsys, ["--config", str(TINY_CONFIG), *sets(f"init_from={tmp_path / 'empty'}", f"output_dir={tmp_path / 'run'}")],
                 "is not a checkpoint directory (no config.json)")


def test_bad_matryoshka_keys_fail_at_load(tmp_path, capsys):
    for overrides, message in [(["contrastive.matryoshka_dims=[128, 128]"], "contrastive.matryoshka_dims must be distinct"),
                               (["contrastive.matryoshka_dims=[128, 0]"], "contrastive.matryoshka_dims must be positive integers"),
                               (["contrastive.matryoshka_weights=[1, 2]"], "contrastive.matryoshka_weights must be 4 non-negative numbers"),
                               (["contrastive.matryoshka_dims=null", "contrastive.matryoshka_weights=[1]"], "matryoshka_weights needs contrastive.matryoshka_dims")]:
        expect_error(capsys, ["--config", str(TINY_CONFIG), "--print-config", *sets(*overrides)], message)
