"""Curation cost on this machine, and a projection of the report's run: teacher embedding throughput, consistency
filtering per 1M pairs, hard-negative mining per 1M queries, and the wall time of filtering 470M pairs on 8 GPUs.

    python benchmarks/bench_curate.py                  # ~5 minutes on 2 CPU cores
    python benchmarks/bench_curate.py --pairs 20 --gte-pairs 20 --sample 2000 --queries 200 --corpus 10000   # quick look

What is measured, each with the code `nomic_embed_curate` runs:
1. Teacher throughput, pairs/s and tokens/s: `nomic_embed.curate.Teacher.embed` on real pairs (the offline Wikipedia
   sections: heading → section body, plus Python docstrings: name → docstring), queries and documents, for the offline
   all-MiniLM-L6-v2 and for a model of gte-base's shape (BERT-base: 12 layers, 768 wide; random weights, since gte-base
   is not available offline; speed does not depend on the weight values), both reading up to 512 tokens.
2. Filtering: `filter.sample_keep` (top-2 of every query among its sample's documents, blockwise) on samples of n
   unit vectors of dimension 768 at two sizes; the work is n² dot products, so the time of a 1M sample is extrapolated
   as t(n) · (10⁶/n)², checked by the ratio of the two measured sizes (≈ 4 for a doubling).
3. Mining: `curate.corpus_top_k` (the corpus read from memory-mapped fp16 shards, merged blockwise) for q queries
   against a corpus of c vectors; the work is q · c dot products, extrapolated linearly to 1M queries against
   MSMarco's 8.8M passages.
4. The projection for the report's run (470M pairs, gte-base, 8 GPUs) divides the FLOPs of each part by an assumed
   sustained GPU rate (flags; defaults: H100 SXM, 990 TFLOP/s fp16 dense at 35% for the teacher, 67 TFLOP/s fp32 at
   70% for the fp32 similarity search) and an assumed mean length of the pairs (flags). It is a projection, not a
   measurement; the CPU numbers above are measurements.
Random vectors appear only in 2-3, where the cost is arithmetic and does not depend on the values.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def real_pairs(n: int) -> list[dict]:
    "n/2 Wikipedia section pairs and n/2 Python docstring pairs (real offline text, long and medium documents)."
    from nomic_embed.pairs import offline_pairs
    sources = offline_pairs(["wikipedia_sections", "python_docstrings"])
    return sources["wikipedia_sections"][: n // 2] + sources["python_docstrings"][: n - n // 2]


def gte_base_shaped(directory: Path) -> str:
    "A sentence-transformers model of gte-base's shape (BERT-base, mean pooling), random weights, the offline tokenizer."
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel
    from nomic_embed.filter import offline_teacher_path
    tokenizer = AutoTokenizer.from_pretrained(offline_teacher_path())
    BertModel(BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         max_position_embeddings=512)).save_pretrained(directory / "bert")
    tokenizer.save_pretrained(directory / "bert")
    word = models.Transformer(str(directory / "bert"), max_seq_length=512)
    SentenceTransformer(modules=[word, models.Pooling(768, "mean"), models.Normalize()]).save(str(directory / "st"))
    return str(directory / "st")


def teacher_throughput(name: str, teacher_path: str | None, pairs: list[dict], batch_size: int) -> dict:
    "Pairs/s and tokens/s of `Teacher.embed` over the queries and documents of `pairs`, fp32 on CPU."
    from transformers import AutoTokenizer
    from nomic_embed.curate import CurateConfig, Teacher
    from nomic_embed.filter import offline_teacher_path
    config = CurateConfig(sources=[{"name": "bench"}], teacher=teacher_path, teacher_max_length=512, batch_size=batch_size)
    teacher = Teacher(config, "cpu")
    teacher.embed(["warm up"] * 4)
    tokenizer = AutoTokenizer.from_pretrained(offline_teacher_path())
    queries, documents = [p["query"] for p in pairs], [p["document"] for p in pairs]
    tokens = sum(min(len(ids), 512) for ids in tokenizer(queries + documents)["input_ids"])
    start = time.perf_counter()
    teacher.embed(queries)
    teacher.embed(documents)
    seconds = time.perf_counter() - start
    return {"teacher": name, "pairs": len(pairs), "seconds": round(seconds, 2), "pairs_per_s": round(len(pairs) / seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "tokens_per_pair": round(tokens / len(pairs), 1)}


def filter_cost(sizes: list[int], dim: int = 768, block_size: int = 1024) -> dict:
    "Seconds of `sample_keep` (top-2) on samples of each size, and the extrapolation to a 1M sample."
    from nomic_embed.filter import sample_keep
    rng = np.random.default_rng(0)
    seconds = {}
    for n in sizes:
        q = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((n, dim), dtype=np.float32)), dim=1)
        d = torch.nn.functional.normalize(q + 0.5 * torch.from_numpy(rng.standard_normal((n, dim), dtype=np.float32)), dim=1)
        keys = np.arange(n, dtype=np.uint64)
        start = time.perf_counter()
        sample_keep(q, d, 2, keys, block_size)
        seconds[n] = time.perf_counter() - start
    largest = max(sizes)
    per_million = seconds[largest] * (1e6 / largest) ** 2
    return {"sizes": sizes, "seconds": {n: round(s, 3) for n, s in seconds.items()},
            "scaling_ratio": round(seconds[largest] / seconds[min(sizes)], 2), "expected_ratio": round((largest / min(sizes)) ** 2, 2),
            "gflops": round(2 * largest**2 * dim / seconds[largest] / 1e9, 1), "seconds_per_1M_sample": round(per_million)}


def mining_cost(queries: int, corpus: int, dim: int = 768, shards: int = 4) -> dict:
    "Seconds of `corpus_top_k` (k = 40: 20 negatives + room) for `queries` against a `corpus` in memory-mapped fp16 shards."
    from nomic_embed.curate import Corpus, CurateConfig, Plan, Shard, corpus_top_k, save_array
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        config = CurateConfig(sources=[{"name": "bench", "offline": "pydoc_topics"}])
        plan = Plan("mine", config, Path(scratch), {}, {"bench": [Shard("bench", i, "memory") for i in range(shards)]}, {"bench": "mined"}, {})
        for i in range(shards):
            vectors = rng.standard_normal((corpus // shards, dim), dtype=np.float32)
            save_array(plan.work("bench", i, "document.npy"), (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16))
            save_array(plan.work("bench", i, "dhash.npy"), np.arange(i * corpus // shards, (i + 1) * corpus // shards, dtype=np.uint64))
        store = Corpus.of(plan, "bench")
        q = rng.standard_normal((queries, dim), dtype=np.float32)
        q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float16)
        start = time.perf_counter()
        corpus_top_k(q, store, 40, block_size=1024, corpus_block_size=16_384)
        seconds = time.perf_counter() - start
    per_million_msmarco = seconds * (1e6 / queries) * (8_841_823 / corpus)
    return {"queries": queries, "corpus": corpus, "seconds": round(seconds, 2), "gflops": round(2 * queries * corpus * dim / seconds / 1e9, 1),
            "seconds_per_1M_queries_vs_msmarco": round(per_million_msmarco)}


def projection(args, gte_flops_per_token: float) -> dict:
    "The report's filtering (470M pairs, gte-base, samples of 1M) on `args.gpus` GPUs at the assumed sustained rates."
    pairs, dim = 470e6, 768
    embed_flops = pairs * args.tokens_per_pair * gte_flops_per_token
    search_flops = (pairs / 1e6) * 2 * 1e6**2 * dim  # every sample: 1M queries × 1M documents
    embed_s = embed_flops / (args.gpus * args.teacher_tflops * 1e12 * args.teacher_utilization)
    search_s = search_flops / (args.gpus * args.search_tflops * 1e12 * args.search_utilization)
    return {"pairs": int(pairs), "gpus": args.gpus, "tokens_per_pair": args.tokens_per_pair,
            "embed_hours": round(embed_s / 3600, 2), "filter_search_hours": round(search_s / 3600, 2),
            "total_hours": round((embed_s + search_s) / 3600, 2),
            "disk_tb_fp16_vectors": round(pairs * 2 * dim * 2 / 1e12, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200, help="real pairs embedded by all-MiniLM")
    parser.add_argument("--gte-pairs", type=int, default=60, help="real pairs embedded by the gte-base-shaped model (8x slower)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sample", type=int, default=8000, help="the larger filter sample measured (the smaller is half)")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--corpus", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--tokens-per-pair", type=float, default=None, help="mean query + document tokens of the 470M pairs "
                        "(default: the measured real pairs' mean, truncated at 512)")
    parser.add_argument("--teacher-tflops", type=float, default=990.0, help="GPU fp16 dense peak (H100 SXM: 990)")
    parser.add_argument("--teacher-utilization", type=float, default=0.35)
    parser.add_argument("--search-tflops", type=float, default=67.0, help="GPU fp32 peak (H100 SXM: 67; sample_keep runs fp32)")
    parser.add_argument("--search-utilization", type=float, default=0.7)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()  # long docstrings are truncated at 512 tokens on purpose
    hf_logging.disable_progress_bar()
    pairs = real_pairs(args.pairs)
    results = {"threads": torch.get_num_threads()}
    results["teacher_minilm"] = teacher_throughput("all-MiniLM-L6-v2", None, pairs, args.batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        results["teacher_gte_base_shape"] = teacher_throughput("gte-base shape (BERT-base)", gte_base_shaped(Path(scratch)),
                                                               real_pairs(args.gte_pairs), args.batch_size)
    gte = results["teacher_gte_base_shape"]
    # BERT-base forward FLOPs per token: 2 × 85M non-embedding weights + attention at the measured mean length
    mean_len = gte["tokens_per_pair"] / 2
    gte_flops_per_token = 2 * 85e6 + 2 * 2 * 12 * 768 * mean_len
    gte["achieved_gflops"] = round(gte["tokens_per_s"] * gte_flops_per_token / 1e9, 1)
    for key in ("teacher_minilm", "teacher_gte_base_shape"):
        results[key]["hours_per_1M_pairs"] = round(1e6 / results[key]["pairs_per_s"] / 3600, 1)
    results["filter"] = filter_cost([args.sample // 2, args.sample])
    results["mine"] = mining_cost(args.queries, args.corpus)
    if args.tokens_per_pair is None:
        args.tokens_per_pair = gte["tokens_per_pair"]
    results["projection_470M_pairs"] = projection(args, gte_flops_per_token)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
