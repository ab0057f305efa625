"""Does `torch.compile` speed up CPU inference? The Embedder's encoder in eager mode (oneDNN fp32 linears, in-place RoPE:
the model chapter's inference path) against the same module compiled by Inductor, on the same real texts, interleaved.

    python benchmarks/bench_compile.py                    # 32x128, one thread, 4 rounds
    python benchmarks/bench_compile.py --case mixed --threads 2

Inductor's oneDNN lowering of linear layers needs the weights frozen into the graph (`torch._inductor.config.freezing`,
the setting for inference); without it compilation stops with a LoweringException. Compiled with freezing, the graph is
specialised to the input shape: each new (batch, length) recompiles, and the encoder's 12 blocks exhaust Dynamo's
recompile limit at once, so part of the model falls back to eager. The first call (compilation) is reported, not
counted. Each round times one forward pass of each engine (rotating order); one line per case: the compiled module's
speed-up over eager as the median per-round ratio [range], and the largest |difference| of the hidden states.

Measured (AMD EPYC, 2 cores shared with a training run, torch 2.13, full-size random-weight model, one thread):
  32x128  compiled 0.87x [0.84-0.90 over 4 rounds] of eager (compilation 29 s); max |diff| 3.1e-06
  (a first probe, timed the same way: 0.86x [0.82-0.94], compilation 21 s)
So the eager oneDNN path stays the Embedder's default; `torch.compile` is not used.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embed import TASK, build_cases  # noqa: E402
from benchtools import format_ratio, interleaved, ratio_stats  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="32x128", choices=("32x128", "mixed"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # Dynamo's recompile-limit warnings: the docstring says what they mean
    from nomic_embed.corpus import load_tokenizer
    from nomic_embed.inference import pad_token_ids, tokenize
    from nomic_embed.model import NomicBertConfig, NomicBertModel
    import torch._inductor.config as inductor_config

    texts = [f"{TASK}: {t}" for t in build_cases(96, 1)[args.case]]
    tokenizer = load_tokenizer()
    ids, _ = tokenize(tokenizer, texts, 8192)
    input_ids, attention_mask = pad_token_ids(ids, tokenizer.pad_token_id, torch.device("cpu"))  # one batch, (n, longest)
    torch.manual_seed(0)
    model = NomicBertModel(NomicBertConfig()).eval()
    inductor_config.freezing = True  # the oneDNN linear lowering needs frozen weights
    compiled = torch.compile(model)
    with torch.inference_mode():
        reference = model(input_ids, attention_mask=attention_mask).last_hidden_state
        start = time.perf_counter()
        difference = (compiled(input_ids, attention_mask=attention_mask).last_hidden_state - reference).abs().max().item()
        compile_seconds = time.perf_counter() - start
        times = interleaved({"eager": lambda: model(input_ids, attention_mask=attention_mask),
                             "compiled": lambda: compiled(input_ids, attention_mask=attention_mask)}, rounds=args.rounds)
    print(f"{args.case}  compiled {format_ratio(ratio_stats(times['compiled'], times['eager']))} of eager "
          f"(compilation {compile_seconds:.0f} s); max |diff| {difference:.1e}; {args.threads} thread(s), {tuple(input_ids.shape)} tokens")


if __name__ == "__main__":
    main()
