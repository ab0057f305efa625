"""Contrastive step benchmark (chapters 04_contrastive, 05_gradcache, 06_pairs).

1. Throughput (pairs/s) and peak memory of one contrastive step against batch size, plain back-propagation versus
   GradCache, on real offline pairs (manual pages, Python docstrings, Wikipedia sections) and the tiny NomicBERT.
2. Our InfoNCE + GradCache (`gradcache_step`) against sentence-transformers' `CachedMultipleNegativesRankingLoss`
   on the same encoder weights, data, batch and chunk size: ratios of step time and of peak memory, same run,
   plus the relative difference of the two gradients (they compute the same thing).

    python benchmarks/bench_contrastive.py                      # CPU, tiny model, 1 thread
    python benchmarks/bench_contrastive.py --device cuda --model base --batch-sizes 64 256 1024 4096 --peer-batch 1024
    python benchmarks/bench_contrastive.py --device cuda --model base --precision bf16 --data .gpu   # pairs from bench_gpu.py prepare

Timings are medians over --repeats steps after a warm-up step, all taken before any memory measurement (on CPU the
profiler that counts memory slows a step); memory is the peak of live tensors in one step above the level before it
(the CUDA allocator's count on GPU; on CPU the profiler's record of every allocation, see
benchtools.measure_peak_memory).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from nomic_embed.contrastive import info_nce_loss
from nomic_embed.corpus import load_tokenizer
from nomic_embed.gradcache import MeanPooledEncoder, gradcache_step
from nomic_embed.model import NomicBertConfig, NomicBertModel
from nomic_embed.pairs import offline_pairs

from benchtools import gradient_vector, measure_peak_memory

MODELS = {"tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
          "base": {}}  # base: the paper's 768/12/12 encoder


def real_pairs(count: int, data: str | None = None) -> tuple[list[str], list[str]]:
    "`count` (query, document) pairs from offline sources (or the folder `bench_gpu.py prepare` wrote), cycling in a fixed order."
    if data:
        rows = json.loads((Path(data) / "texts.json").read_text())["pairs"]
    else:
        rows = [row for rows in offline_pairs(["python_doc_sections", "python_docstrings", "wikipedia_sections"]).values() for row in rows]
    rows = [rows[i % len(rows)] for i in range(count)]
    return [f"search_query: {r['query']}" for r in rows], [f"search_document: {r['document']}" for r in rows]


def tokenised(tokenizer, texts: list[str], max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}


class SentenceEmbedding(nn.Module):
    "A sentence-transformers module around our encoder: features → features['sentence_embedding']."

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, features: dict) -> dict:
        features["sentence_embedding"] = self.encoder(input_ids=features["input_ids"], attention_mask=features["attention_mask"])
        return features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=list(MODELS), default="tiny")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared machine)")
    parser.add_argument("--query-length", type=int, default=32)
    parser.add_argument("--document-length", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--gradcache-only", type=int, nargs="*", default=[512], help="batch sizes run with GradCache only")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--peer-batch", type=int, default=256, help="batch of the sentence-transformers comparison")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast around every step (CUDA)")
    parser.add_argument("--data", help="folder written by `benchmarks/bench_gpu.py prepare` (pairs and tokenizer), for machines without the offline packages")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = NomicBertModel(NomicBertConfig(**MODELS[args.model])).to(device)
    tokenizer = load_tokenizer(str(Path(args.data) / "tokenizer") if args.data else None)
    largest = max(args.batch_sizes + args.gradcache_only + [args.peer_batch])
    queries, documents = real_pairs(largest, args.data)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.precision == "bf16" else contextlib.nullcontext
    print(f"device {device} ({args.threads} CPU threads), {args.precision}, {args.model} NomicBERT, queries ≤ {args.query_length} tokens, "
          f"documents ≤ {args.document_length} tokens, chunk {args.chunk_size}, median of {args.repeats} steps\n")

    def batch_of(size: int) -> dict:
        return {"query": tokenised(tokenizer, queries[:size], args.query_length, device),
                "document": tokenised(tokenizer, documents[:size], args.document_length, device)}

    def seconds(encoder: nn.Module, step) -> float:
        "Median seconds of `step` over the repeats, after one warm-up step."
        times = []
        for repeat in range(args.repeats + 1):
            encoder.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with autocast():
                step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if repeat:
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    def mebibytes(encoder: nn.Module, step) -> float:
        "Peak MiB of one `step` (after the timing runs: on CPU the profiler that counts memory slows the step)."
        encoder.zero_grad(set_to_none=True)
        with autocast():
            return measure_peak_memory(step, device)[1] / 2**20

    # the steps: plain and GradCache at every batch size, and ours versus sentence-transformers
    encoder = MeanPooledEncoder(model)
    sizes = sorted(set(args.batch_sizes + args.gradcache_only))
    batches = {size: batch_of(size) for size in sizes}
    cases = {}  # (name, batch) → (encoder, step)
    for size in sizes:
        if size in args.batch_sizes:
            cases["plain", size] = (encoder, lambda b=batches[size]: gradcache_step(encoder, b, info_nce_loss, None))
        cases["gradcache", size] = (encoder, lambda b=batches[size]: gradcache_step(encoder, b, info_nce_loss, args.chunk_size))

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
    peer_batch = batch_of(args.peer_batch)
    ours, theirs = MeanPooledEncoder(copy.deepcopy(model)), MeanPooledEncoder(copy.deepcopy(model))
    st_model = SentenceTransformer(modules=[SentenceEmbedding(theirs)], device=str(device))
    st_loss = CachedMultipleNegativesRankingLoss(st_model, scale=50.0, mini_batch_size=args.chunk_size)

    def st_step():
        loss = st_loss([dict(peer_batch["query"]), dict(peer_batch["document"])], None)
        loss.backward()
        return loss.detach()

    def our_step():
        return gradcache_step(ours, peer_batch, info_nce_loss, args.chunk_size)

    # timing first (plain malloc), peers interleaved so drift in machine load hits both; then memory
    timing = {key: seconds(*case) for key, case in cases.items()}
    peer_times = {"ours": [], "theirs": []}
    for _ in range(2):
        peer_times["ours"].append(seconds(ours, our_step))
        peer_times["theirs"].append(seconds(theirs, st_step))
    memory = {key: mebibytes(*case) for key, case in cases.items()}
    peer_memory = {"ours": mebibytes(ours, our_step), "theirs": mebibytes(theirs, st_step)}

    print(f"{'batch':>6} | {'plain pairs/s':>13} {'plain MiB':>10} | {'GradCache pairs/s':>17} {'GradCache MiB':>13} | GradCache time / plain time")
    for size in sizes:
        if ("plain", size) in timing:
            plain = f"{size / timing['plain', size]:>13.1f} {memory['plain', size]:>10.1f}"
            ratio = f"{timing['gradcache', size] / timing['plain', size]:.2f}"
        else:
            plain, ratio = f"{'-':>13} {'-':>10}", "-"
        print(f"{size:>6} | {plain} | {size / timing['gradcache', size]:>17.1f} {memory['gradcache', size]:>13.1f} | {ratio}")

    ours.zero_grad(set_to_none=True)
    theirs.zero_grad(set_to_none=True)
    with autocast():
        our_loss, their_loss = our_step(), st_step()
    g_ours, g_theirs = gradient_vector(ours), gradient_vector(theirs)
    difference = ((g_ours - g_theirs).norm() / g_theirs.norm()).item()
    our_time, their_time = statistics.median(peer_times["ours"]), statistics.median(peer_times["theirs"])
    print(f"\nbatch {args.peer_batch}, chunks of {args.chunk_size}: ours (gradcache_step + info_nce_loss) vs sentence-transformers CachedMultipleNegativesRankingLoss")
    print(f"  step time   ours {our_time:.3f} s   theirs {their_time:.3f} s   ratio ours/theirs {our_time / their_time:.2f}")
    print(f"  peak memory ours {peer_memory['ours']:.1f} MiB   theirs {peer_memory['theirs']:.1f} MiB   ratio ours/theirs {peer_memory['ours'] / peer_memory['theirs']:.2f}")
    print(f"  loss ours {our_loss.item():.6f}   theirs {their_loss.item():.6f}   gradient relative difference {difference:.1e}")


if __name__ == "__main__":
    main()
