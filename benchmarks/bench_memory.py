"""Activation memory of a NomicBERT training step per token, measured on CPU with CUDA's bf16 autocast rules.

What a training step holds beyond weights, gradients and optimiser state grows with the tokens of a micro-batch
(stage 1) or of a GradCache chunk (stages 2-3). Which tensors autograd saves, their shapes and dtypes, do not depend
on the device, so they are measured here, on CPU, for the full 137M model:

1. the inventory: every tensor one forward saves for backward (`torch.autograd.graph.saved_tensors_hooks`), counted
   once per storage, parameters and their bf16 copies apart, grouped by the operation that saved it;
2. the peak of a whole forward + backward (`benchtools.measure_peak_memory`: the profiler's allocation record), per
   token, as the slope between two lengths (constants such as the bf16 weight copies cancel): for the encoder alone
   (stages 2-3: a pooled embedding), with and without gradient checkpointing, and for stage 1's MLM step (30% of
   the tokens through the head and its cross-entropy over 30,528 logits); what the head adds, per masked token;
3. the head's own peak per masked token (the logits and the cross-entropy's buffers), for reference.

The GPU runs in bf16 autocast, this CPU in fp32; `CudaAutocast` applies CUDA's autocast rules to the operations the
model calls (matmuls, linears and attention in bf16; layer norm, softmax and the losses in fp32; everything else in
the dtype of its inputs), so each tensor has the dtype it has on the GPU, and the bytes are the GPU's. (CPU's own
autocast differs: it runs layer norm in bf16.) The numbers are compared with `nomic_embed.train.MEMORY_BYTES`, the
constants `nomic_embed_train --plan` uses; a ratio far from 1.00 means the constants need updating.

Usage: python benchmarks/bench_memory.py [--lengths 1024 2048] [--layers 12] [--threads 2]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import time

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from benchtools import measure_peak_memory

# CUDA autocast's op lists (PyTorch's autocast_mode.cpp), restricted to what a NomicBERT step calls
BF16_OPS = {"linear", "matmul", "__matmul__", "mm", "bmm", "addmm", "baddbmm", "einsum", "scaled_dot_product_attention"}
FP32_OPS = {"layer_norm", "softmax", "log_softmax", "cross_entropy", "nll_loss", "logsumexp", "sum", "norm", "exp", "pow",
            "rsqrt", "cumsum"}


class CudaAutocast(TorchFunctionMode):
    """CUDA's bf16 autocast on any device: floating inputs of `BF16_OPS` cast to bf16 (a parameter's copy cached for the
    forward, as autocast does), of `FP32_OPS` to fp32; other operations run in their inputs' dtypes. `current` names the
    operation running (what a saved-tensor hook sees)."""

    def __init__(self):
        super().__init__()
        self.weight_copies: dict[int, Tensor] = {}
        self.current = ""

    def cast(self, value, dtype: torch.dtype):
        if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != dtype:
            if value.is_leaf and value.requires_grad:  # a parameter: one copy per forward
                return self.weight_copies.setdefault(id(value), value.to(dtype))
            return value.to(dtype)
        if isinstance(value, (list, tuple)):
            return type(value)(self.cast(v, dtype) for v in value)
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs, name = kwargs or {}, getattr(func, "__name__", "")
        dtype = torch.bfloat16 if name in BF16_OPS else torch.float32 if name in FP32_OPS else None
        if dtype is not None:
            args, kwargs = self.cast(args, dtype), {key: self.cast(v, dtype) for key, v in kwargs.items()}
        outer, self.current = self.current, name
        try:
            return func(*args, **kwargs)
        finally:
            self.current = outer


def build(layers: int, checkpointing: bool = False):
    from nomic_embed.model import NomicBertConfig, NomicBertForPreTraining
    torch.manual_seed(0)
    model = NomicBertForPreTraining(NomicBertConfig(num_hidden_layers=layers)).train()
    if checkpointing:  # the recomputation in backward runs under the same rules as the forward
        recompute = {"use_reentrant": False, "context_fn": lambda: (contextlib.nullcontext(), CudaAutocast())}
        model.activation_checkpointing_enable(recompute)
    for param in model.parameters():  # gradients exist before the step (as in training): backward adds into them
        param.grad = torch.zeros_like(param)
    # the embedding matrix's gradient is a dense (30,528, 768) buffer at the end of backward: a constant spike that
    # would hide the per-token slope of a small measurement; what depends on the tokens is unchanged without it
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    return model


def real_ids(length: int) -> Tensor:
    "One chunk of `length` tokens of real text (the offline Wikipedia sample), and its 30% MLM labels."
    from nomic_embed.corpus import CorpusConfig, load_tokenizer, packed_corpus
    from nomic_embed.mlm import MLMBatches, SpecialTokens
    tokenizer = load_tokenizer()
    chunks = packed_corpus(CorpusConfig(chunk_length=length), "train", tokenizer, progress=False)
    batch = MLMBatches(chunks, SpecialTokens.from_tokenizer(tokenizer), seed=0, global_batch_size=1,
                       micro_batch_size=1).micro_batches(0)[0]
    return batch["input_ids"], batch["labels"]


def inventory(model, input_ids: Tensor) -> tuple[dict, int, int]:
    "Bytes the encoder's forward saves for backward by (operation, dtype): bytes and tensors; total; bf16 weight copies."
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, tuple] = {}
    policy = CudaAutocast()

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), (storage.nbytes(), str(tensor.dtype).removeprefix("torch."), policy.current))
        return tensor

    with policy, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        hidden = model.bert(input_ids).last_hidden_state
    copies = {c.untyped_storage().data_ptr() for c in policy.weight_copies.values()}
    by_op = collections.defaultdict(lambda: [0, 0])
    for ptr, (nbytes, dtype, op) in seen.items():
        if ptr not in copies:
            by_op[(op, dtype)][0] += nbytes
            by_op[(op, dtype)][1] += 1
    del hidden
    return dict(by_op), sum(nbytes for nbytes, _ in by_op.values()), sum(seen[p][0] for p in copies if p in seen)


def step_peak(model, input_ids: Tensor, labels: Tensor | None) -> int:
    "Peak bytes of one forward + backward under `CudaAutocast`: the MLM loss with `labels`, else a pooled embedding's sum."
    def step():
        with CudaAutocast():
            if labels is not None:
                loss = model(input_ids, labels=labels).loss
            else:
                loss = model.bert(input_ids).last_hidden_state.mean(1).float().sum()
        loss.backward()
    return measure_peak_memory(step)[1]


def head_peak(model, targets: int) -> int:
    "Peak bytes of the MLM head and its cross-entropy, forward + backward, on `targets` masked positions."
    hidden = torch.randn(targets, model.config.hidden_size, requires_grad=True)  # the encoder's fp32 output rows
    labels = torch.randint(0, model.config.vocab_size, (targets,))

    def step():
        with CudaAutocast():
            loss = nn.functional.cross_entropy(model.cls(hidden).float(), labels)
        loss.backward()
    return measure_peak_memory(step)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs=2, default=[1024, 2048], help="two chunk lengths (the slope between them)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from nomic_embed.train import MEMORY_BYTES
    short, long = args.lengths
    ids, labels = {}, {}
    for length in (short, long):
        ids[length], labels[length] = real_ids(length)
    started = time.time()
    model = build(args.layers)
    by_op, saved, copies = inventory(model, ids[long])
    print(f"NomicBERT {args.layers} layers, hidden 768, SwiGLU 3072, 12 heads; CUDA bf16 autocast rules; one chunk of "
          f"{long:,} real tokens\n\n1. saved for backward by the encoder's forward (saved by, dtype, tensors per layer, "
          "bytes per token):")
    for (op, dtype), (nbytes, count) in sorted(by_op.items(), key=lambda item: -item[1][0]):
        print(f"   {op:>30} {dtype:>8} {count / args.layers:6.1f}  {nbytes / long:9,.0f}")
    print(f"   {'total':>30} {'':>8} {'':>6}  {saved / long:9,.0f}  = {saved / long / 1024:.1f} KiB/token"
          f"   (+ bf16 weight copies {copies / 2**20:.0f} MiB, once)")
    results = {"encoder_saved": saved / long}
    print("\n2. peak of forward + backward, bytes per token (slope between "
          f"{short:,} and {long:,} tokens):")
    peaks = {}
    for name, checkpointing, with_labels in (("encoder", False, False), ("encoder_checkpointed", True, False),
                                             ("mlm_step", False, True), ("mlm_step_checkpointed", True, True)):
        model = build(args.layers, checkpointing)
        peaks[name] = {n: step_peak(model, ids[n], labels[n] if with_labels else None) for n in (short, long)}
        results[name] = (peaks[name][long] - peaks[name][short]) / (long - short)
        print(f"   {name:>22}: {results[name]:9,.0f}  = {results[name] / 1024:6.1f} KiB/token   "
              f"(peak {peaks[name][long] / 2**30:.2f} GiB at {long:,})")
    # what the MLM head adds to the encoder's peak, per masked token (the plan's stage-1 term)
    targets = {n: int((labels[n] != -100).sum()) for n in (short, long)}
    for suffix in ("", "_checkpointed"):
        added = {n: peaks["mlm_step" + suffix][n] - peaks["encoder" + suffix][n] for n in (short, long)}
        results["mlm_head_per_target" + suffix] = (added[long] - added[short]) / (targets[long] - targets[short])
        print(f"   MLM head and cross-entropy{suffix.replace('_', ' ')}, per masked token ({targets[long]:,} of "
              f"{long:,} tokens masked): {results['mlm_head_per_target' + suffix]:,.0f}")
    model = build(args.layers)
    alone = [head_peak(model, n) for n in (1000, 2000)]
    print(f"\n3. the MLM head and its cross-entropy over {model.config.vocab_size:,} logits alone, peak per masked token: "
          f"{(alone[1] - alone[0]) / 1000:,.0f} bytes = {(alone[1] - alone[0]) / 1000 / model.config.vocab_size:.1f} "
          "bytes per logit (inside a step part of it overlaps the encoder's buffers)")
    if args.layers == 12:
        print("\nagainst nomic_embed.train.MEMORY_BYTES (what --plan uses), measured / stored:")
        for key, stored in MEMORY_BYTES.items():
            print(f"   {key:>32}: {results[key]:10,.0f} / {stored:10,.0f} = {results[key] / stored:.3f}")
    else:
        print("\n(nomic_embed.train.MEMORY_BYTES holds the 12-layer numbers: compare with --layers 12)")
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
