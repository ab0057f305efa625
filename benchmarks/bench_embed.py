"""CPU embedding speed and memory: `nomic_embed.embed.Embedder.encode` against what a CPU user would run instead —
sentence-transformers with its torch backend, and ONNX Runtime running the same model the way sentence-transformers'
`backend="onnx"` does — same weights, same real texts, fp32, engines interleaved round by round.

    python benchmarks/bench_embed.py                          # every case (about an hour on 2 busy cores)
    python benchmarks/bench_embed.py --cases 32x128 --rounds 3  # one case
    python benchmarks/bench_embed.py --engines embedder st_torch --threads 1
    python benchmarks/bench_embed.py --profile mixed            # where the Embedder's time goes (torch.profiler)

Cases (real text: gensim's offline Wikipedia sample, prefixed `search_document: `):
  mixed     `--paragraphs` paragraphs of mixed length (every k-th paragraph of the sample)
  32x128    32 texts cut to exactly 128 tokens
  long2048  `--long` articles cut to 2,048 tokens
  long8192  one article cut to 8,192 tokens (dynamic NTK, alpha = 2, applies beyond 2,048)

The model is the FULL-size nomic-embed configuration (137M parameters, 12 layers, hidden 768, dynamic NTK alpha=2)
with random weights, seed 0 (no trained checkpoint is available offline); speed and memory do not depend on the
values. The Embedder's directory is exported with `Embedder.save_sentence_transformers` (transformers-native
NomicBert + mean Pooling + Normalize); `st_torch` loads that directory with `SentenceTransformer(path)`.

`onnxruntime`: sentence-transformers' own ONNX backend cannot run here — `SentenceTransformer(path, backend="onnx")`
needs optimum-onnx, whose only release (0.1.0) requires transformers < 4.58 and has no `nomic_bert` export config.
So the benchmark does what that backend does: it exports the same transformers model with `torch.onnx.export`
(the TorchScript exporter optimum uses, opset 17, dynamic batch and sequence axes, constant folding), opens it in
an `onnxruntime.InferenceSession` with default options (all graph optimisations, CPU provider, one thread per
core), and puts that session in place of the transformers model inside the sentence-transformers pipeline — the
same tokenisation, length sorting, batching, mean pooling and normalisation as `st_torch`. Needs `pip install
onnxruntime onnx`; without them the engine is skipped.

Dynamic NTK: the Embedder scales RoPE per sequence (eq. 5). transformers' NomicBert (`st_torch`) scales per batch,
from the padded length — the same here, where every long case has texts of one length. The ONNX export traces
transformers' dynamic-RoPE update with a short example input, so `onnxruntime` computes plain RoPE (base 1,000) at
every length (on long8192 its vectors would differ from the other two). Its attention is not fused either: the
graph materialises the 12 x L x L scores, so at 8,192 tokens it needs well over 16 GiB (one run passed 17 GiB
resident before it was stopped); cases whose estimate exceeds `--max-onnx-gib` (default 8) skip it, with a line.

Method: every engine lives in its own persistent process (`benchtools.EngineProcess`), so its memory is its own.
Per case, each engine first encodes the first four texts once (warm-up), then the engines take turns, round by round,
in a rotating order (`benchtools.interleaved`); each times its own `encode` call. Reported per case, one line:
tokens/s of the Embedder, its speed-up over each peer as the median per-round ratio with its range, the peak
resident memory of each process during encoding (the high-water mark, reset after loading and warm-up) and the
largest |difference| between the Embedder's vectors and each peer's. Nothing is asserted: the numbers depend on
the machine and its load.

Measured (AMD EPYC, 2 cores shared with other jobs, torch 2.13, onnxruntime 1.32, default threads; Embedder speed-up,
median per-round ratio [range]; peak resident MiB Embedder / st_torch / onnxruntime):
  32x128    1.18x [1.07-1.28] st_torch, 0.98x [0.96-0.98] onnxruntime; peak 1,138 / 1,362 / 1,709   (3 rounds)
  mixed     1.40x [1.34-1.60] st_torch, 1.30x [1.12-1.35] onnxruntime; peak 1,234 / 1,905 / 3,030   (96 paragraphs, 3 rounds)
  long2048  1.41x [1.28-1.66] st_torch, 1.44x [1.12-1.67] onnxruntime; peak 1,107 / 1,173 / 3,049   (3 rounds)
  long8192  0.91x [0.77-1.04] st_torch, onnxruntime skipped (over 17 GiB); peak 1,362 / 1,787      (2 rounds)
  long8192  1.03x [1.00-1.17] st_torch, re-measured over 4 rounds (`--cases long8192 --engines embedder st_torch --rounds 4`,
            load 3 on 2 cores); peak 1,412 / 1,637; max |dv| 1.5e-08
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchtools import EngineProcess, format_ratio, interleaved, ratio_stats, reset_peak_rss, serve, status_kib  # noqa: E402

TASK = "search_document"
ENGINES = ("embedder", "st_torch", "onnxruntime")
CASES = ("mixed", "32x128", "long2048", "long8192")


def cut_to_tokens(tokenizer, text: str, tokens: int) -> str:
    "The longest whole-word prefix of `text` that tokenises, with the task prefix and [CLS]/[SEP], to at most `tokens` tokens."
    budget = tokens - 2 - len(tokenizer(f"{TASK}: ", add_special_tokens=False)["input_ids"])
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    pieces, offsets = encoded.tokens(), encoded["offset_mapping"]
    if len(pieces) <= budget:
        return text
    cut = budget
    while cut > 0 and pieces[cut].startswith("##"):  # end on a whole word, so the cut text re-tokenises the same
        cut -= 1
    return text[: offsets[cut - 1][1]]


def build_cases(n_paragraphs: int, n_long: int) -> dict[str, list[str]]:
    "The texts of every case, from the offline Wikipedia sample."
    from nomic_embed.corpus import load_tokenizer, wikipedia_articles
    articles = wikipedia_articles()
    tokenizer = load_tokenizer()
    paragraphs = [p for a in articles for _, body in a["sections"] for p in body.split("\n") if len(p.split()) >= 5]
    step = max(1, len(paragraphs) // n_paragraphs)
    longest = sorted(articles, key=lambda a: -len(a["text"]))
    cases = {"mixed": paragraphs[::step][:n_paragraphs]}
    long_paragraphs = [p for p in paragraphs if len(p) > 1200]
    cases["32x128"] = [cut_to_tokens(tokenizer, p, 128) for p in long_paragraphs[:32]]
    cases["long2048"] = [cut_to_tokens(tokenizer, a["text"], 2048) for a in longest[:n_long]]
    cases["long8192"] = [cut_to_tokens(tokenizer, longest[0]["text"], 8192)]
    return cases


def build_texts(n_paragraphs: int, n_long: int, long_tokens: int) -> tuple[list[str], list[str]]:
    "Mixed-length paragraphs and the `n_long` longest articles cut to ~`long_tokens` tokens (for bench_gpu.py)."
    from nomic_embed.corpus import load_tokenizer, wikipedia_articles
    tokenizer = load_tokenizer()
    longest = sorted(wikipedia_articles(), key=lambda a: -len(a["text"]))[:n_long]
    return build_cases(n_paragraphs, 1)["mixed"], [cut_to_tokens(tokenizer, a["text"], long_tokens) for a in longest]


def profile(case: str, texts: list[str], work: Path, rows: int = 12) -> None:
    "Where the Embedder's time goes on one case: torch.profiler's operators by self time, in this process."
    from torch.profiler import ProfilerActivity, profile as torch_profile
    encode = load_engine("embedder", work)
    encode(texts[:4])
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        encode(texts)
    print(f"profile of the Embedder on {case}:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def token_lengths(texts: list[str]) -> list[int]:
    from nomic_embed.corpus import load_tokenizer
    return [len(ids) for ids in load_tokenizer()([f"{TASK}: {t}" for t in texts], truncation=True, max_length=8192, verbose=False)["input_ids"]]


def export_onnx(st_dir: Path, out_file: Path) -> None:
    "Export the transformers model of a sentence-transformers directory to ONNX, as optimum's exporter would."
    import torch
    from transformers import AutoModel
    model = AutoModel.from_pretrained(st_dir).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = torch.tensor([[101, 2023, 2003, 1037, 2460, 6251, 102, 0]])
    inputs = (example, (example > 0).long(), torch.zeros_like(example))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(out_file), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch_size", 1: "sequence_length"} for n in names + ["last_hidden_state"]},
                          opset_version=17, do_constant_folding=True, dynamo=False)


class OnnxFeatureExtraction:
    "Stands in for the transformers model inside sentence-transformers: runs an ONNX Runtime session (as optimum's ORTModelForFeatureExtraction does)."

    def __init__(self, session, config):
        self.session, self.config = session, config
        self.input_names = {i.name for i in session.get_inputs()}

    def forward(self, input_ids, attention_mask, token_type_ids=None, **_):
        import torch
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = (torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids).numpy()
        return {"last_hidden_state": torch.from_numpy(self.session.run(None, feed)[0])}

    __call__ = forward


def load_engine(engine: str, work: Path, threads: int | None = None):
    "An `encode(texts) -> np.ndarray` function for one engine."
    if engine == "embedder":
        from nomic_embed.embed import Embedder
        model = Embedder.from_pretrained(work / "ours", device="cpu")
        return lambda texts: model.encode(texts, TASK, batch_size=32, show_progress=False)
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(work / "st"), device="cpu")
    if engine == "onnxruntime":
        import onnxruntime
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(work / "model.onnx"), options, providers=["CPUExecutionProvider"])
        transformer = model[0]
        config = transformer.model.config
        del transformer.model
        transformer.model = OnnxFeatureExtraction(session, config)
        import gc
        gc.collect()
    return lambda texts: model.encode(texts, prompt_name=TASK, batch_size=32, show_progress_bar=False, convert_to_numpy=True)


def worker(engine: str, work: str, threads: int | None) -> None:
    "The engine process: load, then answer `{texts, vectors?, warm?}` requests with seconds and peak memory."
    import torch
    if threads:
        torch.set_num_threads(threads)
    encode = load_engine(engine, Path(work), threads)
    cache: dict[str, list[str]] = {}

    def handle(request: dict) -> dict:
        texts = cache.setdefault(request["texts"], json.loads(Path(request["texts"]).read_text()))
        if request.get("warm"):
            encode(texts[:4])
            return {"warm": True}
        rss = status_kib("VmRSS") / 1024
        reset_peak_rss()
        start = time.perf_counter()
        vectors = encode(texts)
        seconds = time.perf_counter() - start
        if request.get("vectors"):
            np.save(request["vectors"], np.asarray(vectors, dtype=np.float32))
        return {"seconds": seconds, "rss_mib": rss, "peak_mib": status_kib("VmHWM") / 1024}

    serve(handle)


def prepare(work: Path, engines: list[str]) -> None:
    "Write the full-size random model (seed 0) in the Embedder's layout, as a sentence-transformers directory, and as ONNX."
    import torch
    from nomic_embed.corpus import load_tokenizer
    from nomic_embed.embed import Embedder
    from nomic_embed.checkpoints import save_model
    from nomic_embed.model import NomicBertConfig, NomicBertModel
    if not (work / "st").exists():
        torch.manual_seed(0)
        model = NomicBertModel(NomicBertConfig(rotary_scaling_factor=2.0))  # full size: 768 hidden, 12 layers, 3072 SwiGLU
        save_model(model, work / "ours")
        load_tokenizer().save_pretrained(work / "ours")
        Embedder.from_pretrained(work / "ours", device="cpu").save_sentence_transformers(work / "st")
    if "onnxruntime" in engines and not (work / "model.onnx").exists():
        export_onnx(work / "st", work / "model.onnx")


def onnx_fits(longest: int, limit_gib: float, case: str) -> bool:
    "Whether ONNX Runtime's attention fits: the exported graph materialises every (12 heads x L x L) score matrix, several at once."
    need_gib = 4 * 12 * longest**2 * 4 / 2**30  # scores, softmax, mask broadcast and product: about four fp32 copies
    if need_gib <= limit_gib:
        return True
    print(f"onnxruntime skipped on {case}: its attention needs about {need_gib:.0f} GiB at {longest:,} tokens "
          f"(over --max-onnx-gib {limit_gib:g}; one run at 8,192 tokens passed 17 GiB resident before it was stopped)", flush=True)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per case (each engine once per round)")
    parser.add_argument("--paragraphs", type=int, default=256)
    parser.add_argument("--long", type=int, default=2, help="texts in the long2048 case")
    parser.add_argument("--threads", type=int, default=None, help="threads of every engine (torch.set_num_threads; ONNX Runtime's intra_op_num_threads); default: each engine's own, one per core")
    parser.add_argument("--work", type=Path, default=None, help="folder for the models (reused when it holds them)")
    parser.add_argument("--max-onnx-gib", type=float, default=8.0, help="skip onnxruntime on a case whose attention needs more")
    parser.add_argument("--profile", choices=CASES, default=None, help="profile the Embedder on one case instead of comparing")
    parser.add_argument("--worker", nargs=2, metavar=("ENGINE", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], args.worker[1], args.threads)
    engines = list(args.engines)
    if "onnxruntime" in engines:
        try:
            import onnx, onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime skipped: pip install onnxruntime onnx")
            engines.remove("onnxruntime")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_embed_"))
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, engines)
    import torch
    print(f"full-size NomicBERT (137M), random weights (seed 0), fp32, torch {torch.__version__}, threads "
          f"{args.threads or torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    cases = build_cases(args.paragraphs, args.long)
    if args.profile:
        if args.threads:
            torch.set_num_threads(args.threads)
        return profile(args.profile, cases[args.profile], work)
    threads = ["--threads", str(args.threads)] if args.threads else []
    processes = {e: EngineProcess([sys.executable, __file__, *threads, "--worker", e, str(work)]) for e in engines}
    try:
        for case in args.cases:
            texts, texts_file = cases[case], work / f"{case}.json"
            texts_file.write_text(json.dumps(texts))
            lengths = token_lengths(texts)
            engines = [e for e in processes if e != "onnxruntime" or onnx_fits(max(lengths), args.max_onnx_gib, case)]
            for process in (processes[e] for e in engines):
                process.call(texts=str(texts_file), warm=True)
            first = {e: True for e in engines}

            def run(engine: str):
                vectors = str(work / f"{case}-{engine}.npy") if first.pop(engine, False) else None
                return processes[engine].call(texts=str(texts_file), vectors=vectors)

            replies: dict[str, list[dict]] = {e: [] for e in engines}
            times = interleaved({e: (lambda e=e: replies[e].append(run(e)) or replies[e][-1]) for e in engines}, rounds=args.rounds, warmup=0)
            ours = np.load(work / f"{case}-embedder.npy") if "embedder" in engines else None
            tokens = sum(lengths)
            parts = [f"{case}: {len(texts)} texts, {tokens:,} tokens (median {int(np.median(lengths))}, max {max(lengths)})"]
            for engine in engines:
                seconds = float(np.median(times[engine]))
                part = f"{engine} {tokens / seconds:,.0f} tok/s, peak {max(r['peak_mib'] for r in replies[engine]):,.0f} MiB"
                if engine != "embedder" and ours is not None:
                    difference = np.abs(ours - np.load(work / f"{case}-{engine}.npy")).max()
                    part += f", embedder {format_ratio(ratio_stats(times['embedder'], times[engine]))} faster, max|dv| {difference:.1e}"
                parts.append(part)
            print(" | ".join(parts) + f" | load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for process in processes.values():
            process.close()


if __name__ == "__main__":
    main()
