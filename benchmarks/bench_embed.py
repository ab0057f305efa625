"""Embedding throughput and memory: `nomic_embed.embed.Embedder.encode` vs sentence-transformers over transformers'
native NomicBertModel (the way nomic-embed is run today), same weights, fp32 on CPU.

    python benchmarks/bench_embed.py                 # full run: 1,000 Wikipedia paragraphs + 8 texts of ~8,000 tokens
    python benchmarks/bench_embed.py --paragraphs 100 --long 2 --long-tokens 3000   # quick look
    python benchmarks/bench_embed.py --threads 1     # one torch thread per process (for CPU cores shared with other jobs)

The model is the FULL-size nomic-embed configuration (137M parameters, 12 layers, hidden 768, dynamic NTK α=2) with
random weights (no trained checkpoint is available offline); speed and memory do not depend on the weight values.
Both engines get the same weights: the Embedder's model is exported with `Embedder.save_sentence_transformers` and
loaded with `SentenceTransformer(path)` (no remote code). Texts are real: paragraphs of gensim's offline Wikipedia
sample (mixed lengths) and the 8 longest articles cut to ~8,000 tokens.

Each (engine, text set) runs in its own fresh process, one after the other, so peak memory is that engine's alone:
the resident-set high-water mark during the encode call (reset through /proc/self/clear_refs after loading).
Reported: docs/s and tokens/s (real tokens, prefix and [CLS]/[SEP] included, padding excluded), the ratio Embedder / sentence-transformers, peak RSS and its growth over the loaded model, the max |difference|
between the two engines' vectors, and model FLOP/s as a fraction of the machine's fp32 matmul rate measured in the
same run (the best timing of 2048³ matmuls, before and after). No timing is asserted: numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchtools import matmul_gflops, reset_peak_rss, status_kib, useful_flops

TASK = "search_document"


def build_texts(n_paragraphs: int, n_long: int, long_tokens: int) -> tuple[list[str], list[str]]:
    "Mixed-length Wikipedia paragraphs (every k-th of the offline sample) and the longest articles cut to ~long_tokens."
    from nomic_embed.corpus import load_tokenizer, wikipedia_articles
    articles = wikipedia_articles()
    tokenizer = load_tokenizer()
    paragraphs = [p for a in articles for _, body in a["sections"] for p in body.split("\n") if len(p.split()) >= 5]
    step = max(1, len(paragraphs) // n_paragraphs)
    mixed = paragraphs[::step][:n_paragraphs]
    longest = sorted(articles, key=lambda a: -len(a["text"]))[:n_long]
    long_texts = []
    budget = long_tokens - 2 - len(tokenizer(f"{TASK}: ", add_special_tokens=False)["input_ids"])  # [CLS], prefix, [SEP]
    for article in longest:
        encoded = tokenizer(article["text"], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        tokens, offsets = encoded.tokens(), encoded["offset_mapping"]
        cut = min(budget, len(tokens) - 1)
        while cut > 0 and tokens[cut].startswith("##"):  # end on a whole word, so the cut text re-tokenises the same
            cut -= 1
        long_texts.append(article["text"][: offsets[cut - 1][1]])
    return mixed, long_texts


def child(engine: str, text_file: str, model_dir: str, out_file: str) -> None:
    "Run one engine on one text set in this (fresh) process; write timing, memory and vectors."
    import gc
    texts = json.loads(Path(text_file).read_text())
    warm = ["A short warm-up sentence.", "Another one, a little longer than the first warm-up sentence."]
    if engine == "embedder":
        from nomic_embed.embed import Embedder
        model = Embedder.from_pretrained(Path(model_dir) / "ours", device="cpu")
        model.encode(warm, TASK)
        encode = lambda: model.encode(texts, TASK, batch_size=32, show_progress=False)
    else:
        from sentence_transformers import SentenceTransformer
        model = SentenceTransformer(str(Path(model_dir) / "st"), device="cpu")
        model.encode(warm, prompt_name=TASK)
        encode = lambda: model.encode(texts, prompt_name=TASK, batch_size=32, show_progress_bar=False, convert_to_numpy=True)
    gc.collect()
    rss_loaded = status_kib("VmRSS") / 1024
    reset_peak_rss()  # reset the peak-RSS mark: measure the encode call alone
    start = time.perf_counter()
    vectors = encode()
    seconds = time.perf_counter() - start
    rss_peak = status_kib("VmHWM") / 1024
    np.save(out_file + ".npy", np.asarray(vectors, dtype=np.float32))
    Path(out_file).write_text(json.dumps({"seconds": seconds, "rss_loaded_mib": rss_loaded, "rss_peak_mib": rss_peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paragraphs", type=int, default=1000)
    parser.add_argument("--long", type=int, default=8)
    parser.add_argument("--long-tokens", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every process (default: torch's default)")
    parser.add_argument("--child", nargs=4, metavar=("ENGINE", "TEXTS", "MODEL_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(*args.child)

    from nomic_embed.corpus import load_tokenizer
    from nomic_embed.embed import Embedder
    from nomic_embed.model import NomicBertConfig, NomicBertModel

    work = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    torch.manual_seed(0)
    config = NomicBertConfig(rotary_scaling_factor=2.0)  # full size: 768 hidden, 12 layers, 12 heads, 3072 SwiGLU
    model = NomicBertModel(config)
    print(f"model: full-size NomicBERT, {sum(p.numel() for p in model.parameters()):,} parameters, random weights (seed 0), fp32, "
          f"{torch.get_num_threads()} threads; load average at start {os.getloadavg()[0]:.1f}")
    model.save_pretrained(work / "ours")
    load_tokenizer().save_pretrained(work / "ours")
    Embedder.from_pretrained(work / "ours", device="cpu").save_sentence_transformers(work / "st")
    del model

    mixed, long_texts = build_texts(args.paragraphs, args.long, args.long_tokens)
    tokenizer = load_tokenizer()
    rate_before = matmul_gflops()
    results = {}
    for name, texts in (("mixed", mixed), ("long", long_texts)):
        lengths = [len(ids) for ids in tokenizer([f"{TASK}: {t}" for t in texts], truncation=True, max_length=8192, verbose=False)["input_ids"]]
        (work / f"{name}.json").write_text(json.dumps(texts))
        print(f"\n{name}: {len(texts)} texts, {sum(lengths):,} tokens; length min/median/p90/max = "
              f"{min(lengths)}/{int(np.median(lengths))}/{int(np.percentile(lengths, 90))}/{max(lengths)}")
        for engine in ("embedder", "sentence-transformers"):
            out = work / f"{name}-{engine}.json"
            threads = ["--threads", str(args.threads)] if args.threads else []
            subprocess.run([sys.executable, __file__, *threads, "--child", engine, str(work / f"{name}.json"), str(work), str(out)], check=True)
            result = json.loads(out.read_text())
            result.update(docs_per_s=len(texts) / result["seconds"], tokens_per_s=sum(lengths) / result["seconds"],
                          gflops=useful_flops(lengths) / result["seconds"] / 1e9)
            results[name, engine] = result
            print(f"  {engine:>22}: {result['seconds']:8.1f} s  {result['docs_per_s']:8.2f} docs/s  {result['tokens_per_s']:8.0f} tokens/s  "
                  f"{result['gflops']:5.1f} model GFLOP/s  peak RSS {result['rss_peak_mib']:7.0f} MiB "
                  f"(+{result['rss_peak_mib'] - result['rss_loaded_mib']:.0f} over the loaded model)")
        ours, peer = results[name, "embedder"], results[name, "sentence-transformers"]
        difference = np.abs(np.load(work / f"{name}-embedder.json.npy") - np.load(work / f"{name}-sentence-transformers.json.npy")).max()
        print(f"  ratio Embedder / sentence-transformers: {ours['docs_per_s'] / peer['docs_per_s']:.2f}x docs/s, "
              f"peak RSS {ours['rss_peak_mib'] / peer['rss_peak_mib']:.2f}x, growth {(ours['rss_peak_mib'] - ours['rss_loaded_mib']) / max(peer['rss_peak_mib'] - peer['rss_loaded_mib'], 1):.2f}x; "
              f"max |vector difference| {difference:.2e}")
    rate_after = matmul_gflops()
    rate = max(rate_before, rate_after)
    print(f"\nfp32 matmul rate (best 2048³ timing, {torch.get_num_threads()} threads): {rate_before:.1f} GFLOP/s before, {rate_after:.1f} after; "
          f"using {rate:.1f}; load average at end {os.getloadavg()[0]:.1f}")
    for (name, engine), result in results.items():
        flops_per_token = result["gflops"] / result["tokens_per_s"] * 1e9
        print(f"  {name:>5} {engine:>22}: {result['gflops'] / rate:5.1%} of the matmul rate "
              f"({result['tokens_per_s']:.0f} tokens/s of a {rate * 1e9 / flops_per_token:.0f} tokens/s ceiling at {flops_per_token / 1e9:.2f} GFLOP/token)")
    print(f"\nwork directory (models, texts, vectors): {work}")


if __name__ == "__main__":
    main()
