"""Stage-1 (MLM) throughput on this machine, measured in one run against the peer:

1. training-step throughput (forward + backward + AdamW, fp32 CPU, tokens/s) of our NomicBertForPreTraining, whose MLM
   head runs only on the masked positions, vs transformers' NomicBertForMaskedLM (full-vocabulary logits), same
   config, same batch of real masked Wikipedia chunks; measurements alternate between the two to share the noise of
   a busy machine, and the median is reported;
2. corpus throughput: tokenisation (num_proc 1 and 2), packing into 2,048-token chunks, and the cached on-disk build;
3. the projected wall time of the full-scale run (report Table 2: 100k steps x 4,096 x 2,048 tokens) on 8xH100,
   from a FLOP count and stated utilisation assumptions (no GPU here to measure).

Usage: python benchmarks/bench_mlm.py [--sizes tiny small] [--rounds 5] [--steps 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

SIZES = {  # name: (hidden, layers, heads, ffn, chunk_length, batch)
    "tiny": (128, 2, 2, 512, 128, 32),     # configs/mlm_tiny.yaml
    "small": (256, 4, 4, 1024, 512, 8),
}


def masked_batch(chunk_length: int, batch_size: int) -> dict[str, torch.Tensor]:
    from nomic_embed.corpus import CorpusConfig, load_tokenizer, packed_corpus
    from nomic_embed.mlm import MLMBatches, SpecialTokens
    tokenizer = load_tokenizer()
    corpus = packed_corpus(CorpusConfig(chunk_length=chunk_length), "train", tokenizer, progress=False)
    source = MLMBatches(corpus, SpecialTokens.from_tokenizer(tokenizer), seed=0, global_batch_size=batch_size, micro_batch_size=batch_size)
    return source.micro_batches(0)[0]


def build_models(hidden: int, layers: int, heads: int, ffn: int):
    import transformers
    from nomic_embed.model import NomicBertConfig, NomicBertForPreTraining
    torch.manual_seed(0)
    ours = NomicBertForPreTraining(NomicBertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn))
    peer = transformers.NomicBertForMaskedLM(transformers.NomicBertConfig(vocab_size=30528, hidden_size=hidden, num_hidden_layers=layers,
                                                                        num_attention_heads=heads, intermediate_size=ffn))
    return ours.train(), peer.train()


def time_steps(model, optimizer, batch, steps: int) -> float:
    "Seconds per training step (forward with labels, backward, AdamW step)."
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        out = model(input_ids=batch["input_ids"], labels=batch["labels"])
        out.loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def bench_training(size: str, rounds: int, steps: int) -> float:
    hidden, layers, heads, ffn, length, batch_size = SIZES[size]
    batch = masked_batch(length, batch_size)
    ours, peer = build_models(hidden, layers, heads, ffn)
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in (("ours", ours), ("peer", peer))}
    tokens = batch["input_ids"].numel()
    for name, model in (("ours", ours), ("peer", peer)):
        time_steps(model, opts[name], batch, 2)  # warm-up
    times = {"ours": [], "peer": []}
    for _ in range(rounds):
        for name, model in (("ours", ours), ("peer", peer)):
            times[name].append(time_steps(model, opts[name], batch, steps))
    ours_tps, peer_tps = tokens / statistics.median(times["ours"]), tokens / statistics.median(times["peer"])
    targets = int((batch["labels"] != -100).sum())
    print(f"[{size}] hidden {hidden}, {layers} layers, {heads} heads, FFN {ffn}; batch {batch_size} x {length} tokens, {targets} targets (30% masking)")
    print(f"[{size}]   ours (masked-only head)          {ours_tps:10,.0f} tokens/s   (median of {rounds} x {steps} steps)")
    print(f"[{size}]   transformers NomicBertForMaskedLM {peer_tps:10,.0f} tokens/s")
    print(f"[{size}]   ratio ours/transformers: {ours_tps / peer_tps:.2f}x   (goal >= 1.2x)")
    return ours_tps / peer_tps


def bench_corpus() -> None:
    from nomic_embed.corpus import CorpusConfig, load_tokenizer, pack_token_stream, packed_corpus, text_dataset, tokenize_documents
    tokenizer = load_tokenizer()
    wiki = text_dataset("offline_wikipedia")
    results = {}
    for num_proc in (1, 2):
        start = time.perf_counter()
        tokenized = tokenize_documents(wiki, tokenizer, num_proc=num_proc)
        docs = tokenized["input_ids"]
        results[num_proc] = time.perf_counter() - start
    n_tokens = sum(len(d) for d in docs)
    start = time.perf_counter()
    n_chunks = sum(1 for _ in pack_token_stream(docs, 2048))
    pack_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        built = packed_corpus(CorpusConfig(chunk_length=2048, num_proc=2, cache_dir=cache), "train", tokenizer, progress=False)
        build_s = time.perf_counter() - start
    print(f"[corpus] offline Wikipedia: {len(docs)} articles, {n_tokens:,} tokens -> {n_chunks} chunks of 2,048")
    print(f"[corpus]   tokenise (datasets map, num_proc=1): {n_tokens / results[1]:12,.0f} tokens/s")
    print(f"[corpus]   tokenise (datasets map, num_proc=2): {n_tokens / results[2]:12,.0f} tokens/s")
    print(f"[corpus]   pack (concatenate + cut, in memory):  {n_tokens / pack_s:12,.0f} tokens/s")
    print(f"[corpus]   whole cached build (clean is cached in-process; tokenise + pack + write Arrow, num_proc=2): "
          f"{built.stats.tokens / build_s:,.0f} tokens/s ({build_s:.1f} s)")


def projection(mfu_values=(0.3, 0.4, 0.5)) -> None:
    "FLOPs of the full-scale run from the model's shapes, turned into days on 8xH100 at several utilisations."
    hidden, layers, ffn, vocab, seq, mask_rate = 768, 12, 3072, 30528, 2048, 0.30
    steps, batch = 100_000, 4096
    tokens = steps * batch * seq
    linear = layers * 2 * (hidden * 3 * hidden + hidden * hidden + 3 * hidden * ffn)   # Wqkv, out_proj, fc11/fc12/fc2
    attention = layers * 2 * 2 * seq * hidden                                           # QK^T and AV, full bidirectional
    head = mask_rate * 2 * (hidden * hidden + hidden * vocab)                           # masked-only MLM head
    flops_per_token = 3 * (linear + attention + head)                                   # forward + backward (2x)
    total = flops_per_token * tokens
    peak = 8 * 989e12  # H100 SXM dense bf16 tensor-core peak, per GPU
    print(f"[projection] report: {steps:,} steps x {batch:,} x {seq:,} = {tokens:.3e} tokens; "
          f"{flops_per_token / 1e9:.3f} GFLOP/token (train) -> {total:.3e} FLOP")
    for mfu in mfu_values:
        seconds = total / (peak * mfu)
        print(f"[projection]   8xH100 at {mfu:.0%} MFU: {tokens / seconds / 1e6:5.2f} M tokens/s -> {seconds / 86400:4.1f} days")
    four_days = tokens / (4 * 86400)
    print(f"[projection]   the report's ~4 days implies {four_days / 1e6:.2f} M tokens/s = {total / (4 * 86400) / peak:.0%} MFU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-corpus", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU")
    for size in args.sizes:
        bench_training(size, args.rounds, args.steps)
    if not args.skip_corpus:
        bench_corpus()
    projection()


if __name__ == "__main__":
    main()
