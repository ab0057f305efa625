"""Contrastive stage pieces (chapters 04_contrastive, 05_gradcache, 06_pairs): GradCache equals plain back-propagation,
GradCache's peak memory does not grow with the batch, two gloo processes equal one process holding the global batch,
and the one-source batch sampler.

Run: python -m pytest tests/test_contrastive.py  (add -m slow for the batch-1,024 memory test)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from nomic_embed.contrastive import info_nce_loss
from nomic_embed.gradcache import MeanPooledEncoder, gradcache_step
from nomic_embed.model import NomicBertConfig, NomicBertModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the measuring helpers the benchmarks share
from benchtools import gradient_vector, relative_error  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
NUM_NEGATIVES = 2
GLOBAL_BATCH = 8
LOSSES = {  # name → (loss options, uses hard negatives)
    "eq1": ({}, False),
    "eq2": ({}, True),
    "eq2_shared_negatives": ({"shared_negatives": True}, True),
    "bidirectional": ({"bidirectional": True}, False),
}


def tiny_model(seed: int = 0) -> NomicBertModel:
    "The tiny NomicBERT test configuration, initialised from `seed`."
    torch.manual_seed(seed)
    return NomicBertModel(NomicBertConfig(**TINY))


def pydoc_sections() -> list[tuple[str, str]]:
    "(heading, body) of every section of Python's language reference: real text that needs no parsing."
    from pydoc_data.topics import topics
    pairs = []
    for text in topics.values():
        lines = text.strip().split("\n")
        pairs.append((lines[0], "\n".join(lines[2:]).strip()))
    return pairs


def tokenised(texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    from nomic_embed.corpus import load_tokenizer
    encoded = load_tokenizer()(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def global_batch(size: int = GLOBAL_BATCH, negatives: bool = True) -> dict:
    "A tokenised global batch of real (heading → body) pairs; each query's negatives are the bodies of the next sections."
    sections = pydoc_sections()
    queries = [q for q, _ in sections[:size]]
    documents = [d for _, d in sections[:size]]
    batch = {"query": tokenised(queries, 16), "document": tokenised(documents, 48)}
    if negatives:
        negative_texts = [sections[(i + k) % len(sections)][1] for i in range(size) for k in range(1, NUM_NEGATIVES + 1)]
        batch["negatives"] = tokenised(negative_texts, 48)
    return batch


def rows(batch: dict, start: int, stop: int) -> dict:
    "Rows [start, stop) of every side of a batch (negatives: the rows of those queries)."
    out = {side: {k: v[start:stop] for k, v in batch[side].items()} for side in ("query", "document")}
    if "negatives" in batch:
        out["negatives"] = {k: v[start * NUM_NEGATIVES:stop * NUM_NEGATIVES] for k, v in batch["negatives"].items()}
    return out


# ---------------------------------------------------------------- GradCache equals plain back-propagation
@pytest.mark.parametrize("with_negatives", [False, True])
def test_gradcache_matches_full_batch(with_negatives):
    model = tiny_model()
    batch = global_batch(16, negatives=with_negatives)
    plain, cached = MeanPooledEncoder(copy.deepcopy(model)), MeanPooledEncoder(copy.deepcopy(model))
    plain_loss = gradcache_step(plain, batch, info_nce_loss, chunk_size=None)
    cached_loss = gradcache_step(cached, batch, info_nce_loss, chunk_size=3)  # uneven chunks on purpose
    assert abs(plain_loss.item() - cached_loss.item()) <= 1e-5 * abs(plain_loss.item())
    error = relative_error(gradient_vector(cached), gradient_vector(plain))
    assert error <= 1e-5, f"GradCache gradient differs from plain back-propagation by {error:.2e} (relative)"


# ---------------------------------------------------------------- peak memory does not grow with the batch
MEMORY_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, "benchmarks")
from benchtools import measure_peak_memory
from nomic_embed.contrastive import info_nce_loss
from nomic_embed.corpus import load_tokenizer, wikipedia_articles
from nomic_embed.gradcache import MeanPooledEncoder, gradcache_step
from nomic_embed.model import NomicBertConfig, NomicBertModel
torch.set_num_threads(1)
torch.manual_seed(0)
encoder = MeanPooledEncoder(NomicBertModel(NomicBertConfig(**TINY)))
tokenizer = load_tokenizer()
# real text: the offline Wikipedia articles cut into full 128-token windows (documents), their titles (queries)
queries, documents = [], []
for article in wikipedia_articles():
    ids = tokenizer(article["text"], add_special_tokens=False)["input_ids"]
    for start in range(0, len(ids) - 126, 126):
        queries.append(article["title"]); documents.append(tokenizer.decode(ids[start:start + 126]))
def batch_of(n):
    def tok(texts, length):
        e = tokenizer(texts, truncation=True, max_length=length, padding=True, return_tensors="pt")
        return {"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]}
    return {"query": tok(queries[:n], 32), "document": tok(documents[:n], 128)}
def peak(n, chunk):
    batch = batch_of(n)
    encoder.zero_grad(set_to_none=True)
    return measure_peak_memory(lambda: gradcache_step(encoder, batch, info_nce_loss, chunk))[1]
peak(32, None); peak(64, 32)  # warm both paths
result = {"documents": len(documents), "plain_32": peak(32, None), "gradcache_32": peak(32, 32), "gradcache_1024": peak(1024, 32)}
print(json.dumps(result))
"""


@pytest.mark.slow
def test_gradcache_peak_memory():
    "A GradCache step at batch 1,024 (chunks of 32) peaks within 1.5x of a plain step at batch 32 (tiny model, real forward/backward)."
    script = MEMORY_SCRIPT.replace("TINY", repr(TINY))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["documents"] >= 1024
    ratio = result["gradcache_1024"] / result["plain_32"]
    print(f"peak MiB: plain@32 {result['plain_32'] / 2**20:.1f}, GradCache@32 {result['gradcache_32'] / 2**20:.1f}, "
          f"GradCache@1024 {result['gradcache_1024'] / 2**20:.1f}; ratio {ratio:.2f}")
    assert ratio <= 1.5, result


# ---------------------------------------------------------------- two processes equal one process
WORKER = r"""
import contextlib, os, sys, torch, torch.distributed as dist
from functools import partial
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel
sys.path.insert(0, TESTS_DIR)
from test_contrastive import LOSSES, NUM_NEGATIVES, global_batch, rows, tiny_model
from nomic_embed.contrastive import info_nce_loss
from nomic_embed.gradcache import MeanPooledEncoder, gradcache_step
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(1)
encoder = DistributedDataParallel(MeanPooledEncoder(tiny_model()))
all_reduces = [0]
def counting_hook(state, bucket):
    all_reduces[0] += 1
    return default_hooks.allreduce_hook(None, bucket)
encoder.register_comm_hook(None, counting_hook)
full = global_batch()
local = len(full["query"]["input_ids"]) // world
warm = rows(full, rank * local, (rank + 1) * local)
gradcache_step(encoder, warm, info_nce_loss)  # DDP rebuilds its buckets after the first backward
results = {}
for name, (options, with_negatives) in LOSSES.items():
    batch = rows(full, rank * local, (rank + 1) * local)
    if not with_negatives:
        batch.pop("negatives")
    for chunk_size in (None, 2):
        encoder.zero_grad(set_to_none=True)
        all_reduces[0] = 0
        loss = gradcache_step(encoder, batch, partial(info_nce_loss, **options), chunk_size=chunk_size)
        dist.all_reduce(loss)  # mean of the per-rank losses = the global loss (equal local batches)
        results[f"{name}/{chunk_size}"] = {"loss": (loss / world).item(), "all_reduces": all_reduces[0],
                                           "grads": {n: p.grad.clone() for n, p in encoder.module.named_parameters()}}
all_reduces[0] = 0
gradcache_step(encoder, warm, info_nce_loss, chunk_size=2, no_sync=contextlib.nullcontext)  # syncing every chunk
results["all_reduces_without_no_sync"] = all_reduces[0]
# the one-source sampler with rank and world size taken from torch.distributed: the source of every step, per rank
from nomic_embed.pairs import OneSourceBatchSampler, PairDataset, offline_pairs, OFFLINE_SOURCES
dataset = PairDataset(offline_pairs(["pydoc_topics", "python_faq", "python_docstrings"]), OFFLINE_SOURCES)
sampler = OneSourceBatchSampler(dataset, global_batch_size=16, seed=3)
steps = [[dataset.locate(i)[0] for _, i in batch] for batch in sampler]
gathered = [None] * world
dist.all_gather_object(gathered, steps)
results["sampler_sources"] = gathered
torch.save(results, os.path.join(OUT_DIR, f"rank{rank}.pt"))
dist.destroy_process_group()
"""


def test_distributed_loss_and_gradients_match_single_process(tmp_path):
    "torchrun --nproc_per_node=2 (gloo, DDP): loss and DDP-averaged gradients equal one process holding the global batch."
    script = tmp_path / "worker.py"
    script.write_text(WORKER.replace("TESTS_DIR", repr(str(REPO / "tests"))).replace("OUT_DIR", repr(str(tmp_path))))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    full = global_batch()
    for name, (options, with_negatives) in LOSSES.items():
        batch = full if with_negatives else {k: v for k, v in full.items() if k != "negatives"}
        reference = MeanPooledEncoder(tiny_model())
        reference_loss = gradcache_step(reference, batch, partial(info_nce_loss, **options), chunk_size=None).item()
        reference_grads = dict(reference.named_parameters())
        for chunk_size in (None, 2):
            key = f"{name}/{chunk_size}"
            for rank, result in enumerate(ranks):
                got = result[key]
                assert abs(got["loss"] - reference_loss) <= 1e-5 * abs(reference_loss), (key, rank, got["loss"], reference_loss)
                ours = torch.cat([got["grads"][n].flatten() for n in reference_grads])
                theirs = torch.cat([p.grad.flatten() for p in reference_grads.values()])
                error = relative_error(ours, theirs)
                assert error <= 1e-5, f"{key} rank {rank}: gradient differs from one process by {error:.2e} (relative)"
            # one synchronisation per step: GradCache all-reduces exactly as often as a plain step (once per bucket)
            assert ranks[0][key]["all_reduces"] == ranks[0][f"{name}/None"]["all_reduces"] >= 1, key
    # the count can tell: syncing after every chunk's backward all-reduces many more times
    assert ranks[0]["all_reduces_without_no_sync"] > ranks[0]["eq1/2"]["all_reduces"]
    # the sampler, with rank/world from torch.distributed: at every step both ranks hold rows of one and the same source
    per_rank = ranks[0]["sampler_sources"]
    assert len(per_rank) == 2 and len(per_rank[0]) == len(per_rank[1]) > 0
    for step, (sources_0, sources_1) in enumerate(zip(*per_rank)):
        assert len(sources_0) == len(sources_1) == 8 and len(set(sources_0 + sources_1)) == 1, f"step {step} mixes {set(sources_0 + sources_1)}"


# ---------------------------------------------------------------- one source per global batch
@pytest.mark.parametrize("weighting", ["proportional", "uniform"])
@pytest.mark.parametrize("world_size", [2, 4])
def test_one_source_sampler_over_whole_epochs(weighting, world_size):
    "Over whole epochs no global batch mixes sources, every rank is on the same source at every step, no row repeats."
    from nomic_embed.pairs import OFFLINE_SOURCES, OneSourceBatchSampler, PairCollator, PairDataset, offline_pairs
    dataset = PairDataset(offline_pairs(["pydoc_topics", "python_faq", "python_docstrings", "python_code"]), OFFLINE_SOURCES)
    global_batch = 32
    samplers = [OneSourceBatchSampler(dataset, global_batch, rank=r, world_size=world_size, seed=7, weighting=weighting)
                for r in range(world_size)]
    expected_steps = sum(size // global_batch for size in dataset.source_sizes.values())
    orders = []
    for epoch in range(2):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        seen, order = set(), []
        for step, local_batches in enumerate(zip(*samplers)):
            sources = {dataset.locate(index)[0] for batch in local_batches for _, index in batch}
            assert len(sources) == 1, f"epoch {epoch} step {step}: the global batch mixes {sources}"
            assert all(len(batch) == global_batch // world_size for batch in local_batches)
            assert all(e == epoch for batch in local_batches for e, _ in batch)
            indices = [index for batch in local_batches for _, index in batch]
            assert len(set(indices)) == global_batch and not seen & set(indices), "a row appears twice in an epoch"
            seen |= set(indices)
            order.append(sources.pop())
        assert len(order) == expected_steps == len(samplers[0])  # every full batch of every source, incomplete ones dropped
        orders.append(order)
    assert orders[0] != orders[1], "each epoch draws a new order of sources"
    # what the trainer sees: collated batches carry their single source
    from nomic_embed.corpus import load_tokenizer
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=samplers[0], collate_fn=PairCollator(load_tokenizer(), 16, 32))
    samplers[0].set_epoch(0)
    assert [batch["source"] for batch in loader] == orders[0]
