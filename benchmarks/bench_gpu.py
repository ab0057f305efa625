"""GPU checks and throughput of nomic_embed against transformers' NomicBert on the same weights (one CUDA device).

The GPU machine may have no internet and none of the offline data packages, so the real text travels with it:

    python benchmarks/bench_gpu.py prepare .gpu          # on the dev install: tokenizer files, real texts and pairs -> .gpu/
    python benchmarks/bench_gpu.py run --data .gpu       # on the GPU: prints a report, --out DIR also writes results.json

Sections of `run` (each runs on its own; a failure is reported and the next section goes on):
  parity    full 137M config, random weights, 32 real mixed-length documents: ours vs transformers in fp32 (hidden
            states on real tokens); every attention backend in bf16 autocast vs ours in fp32 (cosine of pooled
            embeddings; transformers' own bf16-vs-fp32 cosine is the yardstick); 1 x 8,192 tokens with alpha = 2;
            gradients of the varlen backends vs padded SDPA.
  forward   inference tokens/s (real tokens), bf16 autocast, every backend vs transformers; model FLOP utilisation.
  mlm       stage-1 training step (forward + backward + AdamW, bf16 autocast) on 8 x 2,048 packed tokens with 30%
            masking: ours vs transformers' NomicBertForMaskedLM; MFU.
  embed     Embedder.encode (bf16) vs sentence-transformers over transformers' NomicBertModel, same weights.
Contrastive steps on the GPU: benchmarks/bench_contrastive.py --device cuda --model base --precision bf16 --data .gpu;
benchmarks/gpu_checks.sh runs all of it plus a short stage-2 training run of the full model on the prepared pairs.

Timings: CUDA events around whole calls, medians after warm-up. MFU uses 989 TFLOP/s (H100/H200 dense bf16).
Not a test: nothing about speed is asserted.

What a GPU round is for (targets still open; no GPU was available to the latest CPU round, which changed only CPU
paths: oneDNN linears and in-place RoPE apply at CPU fp32 inference only, so every CUDA number below still holds):
  * mlm: the stage-1 step at the report's shape (2,048 tokens, bf16) at >= 40% MFU (last measured: 23% on one H100,
    1.16x transformers) — to try: torch.compile of the encoder blocks, fused AdamW, no host syncs, the masked-only
    head, the largest micro-batch that fits;
  * forward: full-batch inference at >= 40% of peak (last: 24-31%);
  * contrastive (bench_contrastive.py): the GradCache step >= 1.3x sentence-transformers' CachedMNRL at batch
    >= 1,024 (last: 1.02x);
  * flash-attn: untested — install it where a wheel is reachable and run the parity section with it.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import traceback
from pathlib import Path

import torch

from nomic_embed.model import NomicBertConfig, mean_pool

from benchtools import useful_flops

PEAK_BF16 = 989e12
FULL = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


# ---------------------------------------------------------------- prepare (CPU side)

def prepare(folder: Path) -> None:
    "Write tokenizer files, real documents (Lee news corpus, Wikipedia paragraphs) and real pairs to `folder`."
    import shutil
    from gensim.test.utils import datapath
    from nomic_embed.corpus import offline_tokenizer_path
    from nomic_embed.pairs import offline_pairs, write_pairs
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = folder / "tokenizer"
    tokenizer_dir.mkdir(exist_ok=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(Path(offline_tokenizer_path()) / name, tokenizer_dir / name)
    lee = [line.strip() for line in open(datapath("lee_background.cor"), encoding="latin-1") if line.strip()]
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_embed import build_texts
    paragraphs, long_texts = build_texts(2000, 8, 8000)
    by_source = offline_pairs(["python_docstrings", "wikipedia_sections", "pydoc_topics"])
    for name, source_rows in by_source.items():  # JSONL shards for a trainer run (benchmarks/gpu_checks.sh)
        write_pairs(source_rows, folder / "pairs" / f"{name}.jsonl")
    rows = [row for source_rows in by_source.values() for row in source_rows]
    random.Random(0).shuffle(rows)
    pairs = [{"query": r["query"], "document": r["document"]} for r in rows[:4096]]
    (folder / "texts.json").write_text(json.dumps({"lee": lee, "paragraphs": paragraphs, "long": long_texts, "pairs": pairs}))
    print(f"{folder}: {len(lee)} Lee documents, {len(paragraphs)} Wikipedia paragraphs, {len(long_texts)} long articles, "
          f"{len(pairs)} pairs, tokenizer files")


# ---------------------------------------------------------------- helpers (GPU side)

def load_data(folder: Path):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), model_max_length=8192)
    return tokenizer, json.loads((folder / "texts.json").read_text())


def fixed_batch(tokenizer, docs: list[str], batch: int, length: int, device) -> dict:
    "`batch` rows of exactly `length` real tokens ([CLS] text [SEP]) cut from the concatenated documents."
    stream = tokenizer(" ".join(docs), add_special_tokens=False)["input_ids"]
    body = length - 2
    while len(stream) < batch * body:
        stream = stream + stream
    rows = [[tokenizer.cls_token_id] + stream[i * body:(i + 1) * body] + [tokenizer.sep_token_id] for i in range(batch)]
    ids = torch.tensor(rows, device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def mixed_batch(tokenizer, docs: list[str], batch: int, max_length: int, device, seed: int = 0) -> dict:
    "`batch` real documents of their own lengths (<= max_length), right-padded to the longest."
    texts = random.Random(seed).sample(docs, batch) if batch <= len(docs) else [docs[i % len(docs)] for i in range(batch)]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


def cuda_time(fn, warmup: int = 2, repeats: int = 7) -> float:
    "Median seconds of `fn()` over `repeats` calls after `warmup`, timed with CUDA events."
    if not torch.cuda.is_available():  # --smoke on a CPU machine: wall clock, one call
        import time
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def peak_mib(fn) -> float:
    "Peak CUDA memory allocated during one `fn()`, above the level before it."
    if not torch.cuda.is_available():
        fn()
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bf16():
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.cuda.is_available())


def backends() -> list[str]:
    "The attention backends that can run here."
    from nomic_embed.model import _flash_attn_varlen, _torch_varlen_available
    names = ["auto", "sdpa", "sdpa_unpadded"]
    if not torch.cuda.is_available():
        return names
    if _torch_varlen_available():
        names.append("torch_varlen")
    if _flash_attn_varlen() is not None:
        names.append("flash_attn")
    return names


def pair_models(device, rotary_scaling_factor=None):
    "Ours (full config, seed 0) and transformers' NomicBertModel loaded from ours saved in transformers' format."
    import transformers
    from nomic_embed.checkpoints import save_model
    from nomic_embed.model import NomicBertConfig, NomicBertModel
    torch.manual_seed(0)
    ours = NomicBertModel(NomicBertConfig(**FULL, rotary_scaling_factor=rotary_scaling_factor)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_model(ours, tmp, format="transformers")
        peer = transformers.AutoModel.from_pretrained(tmp).eval()
    return ours.to(device), peer.to(device)


# ---------------------------------------------------------------- sections

def section_parity(tokenizer, data, device, results):
    ours, peer = pair_models(device)
    batch = mixed_batch(tokenizer, data["lee"], 32, 512, device)
    mask = batch["attention_mask"].bool()
    out = {}
    with torch.inference_mode():
        theirs32 = peer(**batch).last_hidden_state
        for backend in ("sdpa", "sdpa_unpadded"):
            ours.config.attention_backend = backend
            mine = ours(**batch).last_hidden_state
            out[f"fp32 {backend} vs transformers max|d| (real tokens)"] = (mine - theirs32)[mask].abs().max().item()
        ours.config.attention_backend = "sdpa"
        reference = mean_pool(ours(**batch).last_hidden_state, batch["attention_mask"])
        with bf16():
            theirs16 = mean_pool(peer(**batch).last_hidden_state.float(), batch["attention_mask"])
        out["transformers bf16 vs fp32 min cosine"] = torch.cosine_similarity(theirs16, mean_pool(theirs32, batch["attention_mask"])).min().item()
        for backend in backends():
            ours.config.attention_backend = backend
            with bf16():
                used = ours.attention_backend_for(device, True)
                mine16 = mean_pool(ours(**batch).last_hidden_state.float(), batch["attention_mask"])
            out[f"bf16 {backend} ({used}) vs ours fp32 min cosine"] = torch.cosine_similarity(mine16, reference).min().item()
    # gradients: varlen backends against padded SDPA, bf16 autocast, same batch
    grads = {}
    for backend in [b for b in backends() if b in ("sdpa", "sdpa_unpadded", "torch_varlen", "flash_attn")]:
        ours.config.attention_backend = backend
        ours.zero_grad(set_to_none=True)
        with bf16():
            loss = mean_pool(ours(**batch).last_hidden_state.float(), batch["attention_mask"]).pow(2).sum()
        loss.backward()
        grads[backend] = torch.cat([p.grad.flatten().float() for p in ours.parameters() if p.grad is not None])
    for backend, g in grads.items():
        if backend != "sdpa":
            out[f"bf16 grad {backend} vs sdpa relative diff"] = ((g - grads["sdpa"]).norm() / grads["sdpa"].norm()).item()
    ours.zero_grad(set_to_none=True)
    del ours, peer, grads
    torch.cuda.empty_cache()
    # one 8,192-token real input with dynamic NTK alpha = 2
    ours, peer = pair_models(device, rotary_scaling_factor=2.0)
    long = fixed_batch(tokenizer, data["lee"], 1, 8192, device)
    with torch.inference_mode():
        ours.config.attention_backend = "sdpa"
        out["fp32 1x8192 alpha=2 vs transformers max|d|"] = (ours(**long).last_hidden_state - peer(**long).last_hidden_state).abs().max().item()
    results["parity"] = out
    for key, value in out.items():
        print(f"  {key:<62} {value:.3g}")


def section_forward(tokenizer, data, device, results):
    ours, peer = pair_models(device)
    ours_long, peer_long = None, None
    cases = {
        "a 256x128": fixed_batch(tokenizer, data["lee"], 256, 128, device),
        "b 64x512": fixed_batch(tokenizer, data["lee"], 64, 512, device),
        "c 8x2048": fixed_batch(tokenizer, data["lee"], 8, 2048, device),
        "d 1x8192 alpha=2": fixed_batch(tokenizer, data["lee"], 1, 8192, device),
        "e 256 mixed docs <=512": mixed_batch(tokenizer, data["paragraphs"], 256, 512, device),
        "f 64 mixed docs <=2048": mixed_batch(tokenizer, data["lee"] + data["paragraphs"], 64, 2048, device, seed=1),
    }
    rows = {}
    print(f"  peer attention implementation: {getattr(peer.config, '_attn_implementation', '?')}")
    print(f"  {'case':<24} {'real tok':>9} {'pad %':>6} | " + " ".join(f"{b:>13}" for b in backends()) + f" | {'transformers':>13} | best/peer  MFU best")
    for name, batch in cases.items():
        if name.startswith("d"):
            if ours_long is None:
                del ours, peer
                torch.cuda.empty_cache()
                ours_long, peer_long = pair_models(device, rotary_scaling_factor=2.0)
            model_o, model_p = ours_long, peer_long
        else:
            model_o, model_p = ours if ours_long is None else ours_long, peer if peer_long is None else peer_long
        real = int(batch["attention_mask"].sum())
        flops = useful_flops(batch["attention_mask"].sum(1), NomicBertConfig(**FULL))
        row = {}
        with torch.inference_mode(), bf16():
            for backend in backends():
                model_o.config.attention_backend = backend
                row[backend] = real / cuda_time(lambda: model_o(**batch))
            row["transformers"] = real / cuda_time(lambda: model_p(**batch))
            model_o.config.attention_backend = "auto"
            row["auto peak MiB"] = peak_mib(lambda: model_o(**batch))
            row["transformers peak MiB"] = peak_mib(lambda: model_p(**batch))
        best = max(v for k, v in row.items() if k in backends())
        row["best/peer"] = best / row["transformers"]
        row["MFU best"] = best * flops / real / PEAK_BF16
        pad = 1 - real / batch["input_ids"].numel()
        rows[name] = row
        print(f"  {name:<24} {real:>9,} {pad:>6.1%} | " + " ".join(f"{row[b]:>13,.0f}" for b in backends())
              + f" | {row['transformers']:>13,.0f} | {row['best/peer']:>8.2f}x  {row['MFU best']:>6.1%}"
              + f"   (peak MiB auto {row['auto peak MiB']:.0f} / peer {row['transformers peak MiB']:.0f})")
    results["forward tokens/s"] = rows


def section_mlm(tokenizer, data, device, results):
    import transformers
    from nomic_embed.model import NomicBertConfig, NomicBertForPreTraining
    batch = fixed_batch(tokenizer, data["lee"] + data["paragraphs"], 8, 2048, device)
    ids = batch["input_ids"]
    generator = torch.Generator(device="cpu").manual_seed(0)
    chosen = (torch.rand(ids.shape, generator=generator) < 0.3).to(device)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    inputs = torch.where(chosen, torch.full_like(ids, tokenizer.mask_token_id), ids)
    torch.manual_seed(0)
    ours = NomicBertForPreTraining(NomicBertConfig(**FULL)).to(device).train()
    peer = transformers.NomicBertForMaskedLM(transformers.NomicBertConfig(vocab_size=30528, **FULL)).to(device).train()
    out = {}
    for name, model in (("ours", ours), ("transformers", peer)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with bf16():
                loss = model(input_ids=inputs, labels=labels).loss
            loss.backward()
            optimizer.step()
        seconds = cuda_time(step, warmup=3, repeats=7)
        out[f"{name} tokens/s"] = ids.numel() / seconds
        out[f"{name} peak MiB"] = peak_mib(step)
        del optimizer
    # train FLOPs per token: 3 x forward (encoder at 2,048 tokens) + masked-only head for ours
    per_token = 3 * useful_flops(batch["attention_mask"].sum(1), NomicBertConfig(**FULL)) / ids.numel()
    h = FULL["hidden_size"]
    head = 3 * 0.3 * 2 * (h * h + h * 30528)
    out["ours/transformers"] = out["ours tokens/s"] / out["transformers tokens/s"]
    out["ours MFU (encoder + masked head)"] = out["ours tokens/s"] * (per_token + head) / PEAK_BF16
    results["mlm train step"] = out
    for key, value in out.items():
        print(f"  {key:<40} {value:,.3f}" if value < 10 else f"  {key:<40} {value:,.0f}")
    tokens_total = 100_000 * 4096 * 2048
    print(f"  -> the report's stage 1 ({tokens_total:.2e} tokens) at this rate on 8 GPUs: {tokens_total / (8 * out['ours tokens/s']) / 86400:.1f} days")


def section_embed(tokenizer, data, device, results):
    import numpy as np
    from sentence_transformers import SentenceTransformer
    from nomic_embed.embed import Embedder
    from nomic_embed.checkpoints import save_model
    from nomic_embed.model import NomicBertConfig, NomicBertModel
    torch.manual_seed(0)
    model = NomicBertModel(NomicBertConfig(**FULL, rotary_scaling_factor=2.0))
    texts = data["paragraphs"][:2000]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        embedder = Embedder(model, tokenizer, device=device, dtype="bf16")
        embedder.save_sentence_transformers(tmp)
        st = SentenceTransformer(tmp, device=str(device), model_kwargs={"torch_dtype": torch.bfloat16})
        fp32 = Embedder(model, tokenizer, device=device)  # the same weights, no autocast
        reference = fp32.encode(texts, "search_document", batch_size=64, show_progress=False)
        ours_vec = embedder.encode(texts, "search_document", batch_size=64, show_progress=False)
        their_vec = st.encode(texts, prompt_name="search_document", batch_size=64, normalize_embeddings=True)
        out["ours bf16 vs ours fp32 min cosine"] = float((ours_vec * reference).sum(1).min())
        out["sentence-transformers bf16 vs ours fp32 min cosine"] = float((np.asarray(their_vec) * reference).sum(1).min())
        real = sum(len(t) for t in embedder.tokenizer([f"search_document: {t}" for t in texts], truncation=True, max_length=8192)["input_ids"])
        ours_s = cuda_time(lambda: embedder.encode(texts, "search_document", batch_size=64, show_progress=False), warmup=1, repeats=3)
        their_s = cuda_time(lambda: st.encode(texts, prompt_name="search_document", batch_size=64, normalize_embeddings=True), warmup=1, repeats=3)
        out["ours docs/s"], out["sentence-transformers docs/s"] = len(texts) / ours_s, len(texts) / their_s
        out["ours tokens/s"] = real / ours_s
        out["ours/sentence-transformers"] = their_s / ours_s
        long_texts = data["long"]
        ours_s = cuda_time(lambda: embedder.encode(long_texts, "search_document", batch_size=8, show_progress=False), warmup=1, repeats=3)
        their_s = cuda_time(lambda: st.encode(long_texts, prompt_name="search_document", batch_size=8, normalize_embeddings=True), warmup=1, repeats=3)
        out["long (8 x ~8,000 tokens) ours docs/s"], out["long sentence-transformers docs/s"] = len(long_texts) / ours_s, len(long_texts) / their_s
        out["long ours/sentence-transformers"] = their_s / ours_s
    results["embed"] = out
    for key, value in out.items():
        print(f"  {key:<52} {value:,.4f}" if value < 10 else f"  {key:<52} {value:,.0f}")


SECTIONS = {"parity": section_parity, "forward": section_forward, "mlm": section_mlm, "embed": section_embed}


def run(args) -> None:
    if args.smoke:  # the code paths on CPU with a 2-layer, 64-wide model (no numbers worth reading)
        FULL.update(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    elif not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py run needs a CUDA device; this machine has none (--smoke runs the code paths on CPU)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    tokenizer, data = load_data(Path(args.data))
    import transformers
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)", "torch": torch.__version__, "transformers": transformers.__version__,
               "backends": backends()}
    print(f"{results['device']}, torch {torch.__version__}, transformers {transformers.__version__}; attention backends here: {results['backends']}")
    for name in args.sections:
        print(f"\n[{name}]")
        try:
            SECTIONS[name](tokenizer, data, device, results)
        except Exception:
            traceback.print_exc()
            results[name] = "failed"
        torch.cuda.empty_cache()
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the real texts and tokenizer files the GPU run needs")
    p.add_argument("folder", type=Path)
    r = sub.add_parser("run", help="run the GPU checks")
    r.add_argument("--data", required=True, help="folder written by `prepare`")
    r.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    r.add_argument("--out", help="folder for results.json")
    r.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    prepare(args.folder) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    main()
