"""The `nomic_embed_embed` CLI and the bad-input rules of `nomic_embed.embed` (chapter 10_embed).

Every bad input must fail with a message that names the problem, exit with status 2 (CLI) and leave no output,
no partial run and no temporary file behind. Texts are real (gensim's Lee news corpus); the model is a tiny,
randomly initialised NomicBERT saved with the offline bert-base-uncased tokenizer.
Run: python -m pytest tests/test_embed.py  (add -m slow for the kill-and-resume test)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nomic_embed.corpus import load_tokenizer
from nomic_embed.cli import embed as main
from nomic_embed.embed import Embedder, embed_file, load_embeddings
from nomic_embed.checkpoints import load_model, save_model
from nomic_embed.model import NomicBertConfig, NomicBertModel

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)  # tiny model: one thread avoids OpenMP contention on shared CPU cores


def lee_texts(n: int = 40) -> list[str]:
    "Real news paragraphs from gensim's Lee background corpus."
    from gensim.test.utils import datapath
    with open(datapath("lee_background.cor"), encoding="latin-1") as file:
        texts = [" ".join(line.split()) for line in file if line.strip()]
    return texts[:n]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    "A tiny random NomicBERT (hidden 128, 2 layers, dynamic NTK α=2) with the offline tokenizer."
    path = tmp_path_factory.mktemp("tiny-nomic")
    torch.manual_seed(0)
    config = NomicBertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512, rotary_scaling_factor=2.0)
    save_model(NomicBertModel(config), path)
    load_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def embedder(model_dir) -> Embedder:
    return Embedder.from_pretrained(model_dir, device="cpu")


@pytest.fixture
def workdir(tmp_path) -> Path:
    "A directory for one test's input and output files."
    return tmp_path


def write_txt(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(text + "\n" for text in texts), encoding="utf-8")
    return path


def run_cli(*args: str) -> tuple[int, str]:
    "Call the CLI in-process; return (exit status, stderr text)."
    import contextlib
    import io
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            main([str(a) for a in args])
            status = 0
        except SystemExit as exit:
            status = exit.code
    return status, stderr.getvalue()


def assert_nothing_written(directory: Path, inputs: set[str]) -> None:
    "No output, partial-run directory or temporary file may be left after a failed run."
    left = {p.name for p in directory.iterdir()} - inputs
    assert not left, f"a failed run left {sorted(left)} behind"


# ---- the happy paths ---------------------------------------------------------------------------------


def test_txt_to_npy_matches_embedder(embedder, model_dir, workdir):
    texts = lee_texts(30)
    source = write_txt(workdir / "news.txt", texts)
    status, err = run_cli("--model", model_dir, "--task", "search_document", "--input", source, "--output", workdir / "news.npy",
                          "--chunk-size", 7, "--batch-size", 4, "--quiet")
    assert status == 0, err
    vectors = np.load(workdir / "news.npy")
    assert vectors.shape == (30, 128) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, embedder.encode(texts, "search_document"), atol=1e-5)
    assert {p.name for p in workdir.iterdir()} == {"news.txt", "news.npy"}  # no partial dir, no temp file


def test_jsonl_field_to_parquet_matches_embedder(embedder, model_dir, workdir):
    texts = lee_texts(12)
    source = workdir / "news.jsonl"
    source.write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    status, err = run_cli("--model", model_dir, "--task", "classification", "--input", source, "--output", workdir / "news.parquet",
                          "--field", "body", "--chunk-size", 5, "--quiet")
    assert status == 0, err
    vectors = load_embeddings(workdir / "news.parquet")
    np.testing.assert_allclose(vectors, embedder.encode(texts, "classification"), atol=1e-5)
    assert abs(np.linalg.norm(vectors, axis=1).mean() - 1) > 1e-3  # classification is not normalised by default


def test_resume_recomputes_only_unfinished_chunks(model_dir, workdir, monkeypatch):
    texts = lee_texts(40)
    source = write_txt(workdir / "news.txt", texts)
    args = ["--model", model_dir, "--task", "search_query", "--input", source, "--chunk-size", 8, "--quiet"]
    assert run_cli(*args, "--output", workdir / "reference.npy")[0] == 0
    reference = np.load(workdir / "reference.npy")

    calls = []
    original = Embedder.encode

    def crashing(self, chunk, *a, **k):
        if len(calls) == 3:
            raise RuntimeError("simulated crash while embedding chunk 4")
        calls.append(chunk[0])
        return original(self, chunk, *a, **k)

    monkeypatch.setattr(Embedder, "encode", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([str(a) for a in args] + ["--output", str(workdir / "out.npy")])
    partial = workdir / "out.npy.partial"
    assert not (workdir / "out.npy").exists()
    assert sorted(p.name for p in partial.glob("chunk-*.npy")) == ["chunk-000000.npy", "chunk-000001.npy", "chunk-000002.npy"]

    status, err = run_cli(*args, "--output", workdir / "out.npy")  # without --resume: refuse, keep the partial run
    assert status == 2 and "--resume" in err and partial.exists()
    status, err = run_cli(*args[:3], "search_document", *args[4:], "--output", workdir / "out.npy", "--resume")
    assert status == 2 and "task: 'search_query' then, 'search_document' now" in err

    calls.clear()
    monkeypatch.setattr(Embedder, "encode", lambda self, chunk, *a, **k: (calls.append(chunk[0]), original(self, chunk, *a, **k))[1])
    status, err = run_cli(*args, "--output", workdir / "out.npy", "--resume")
    assert status == 0, err
    assert calls == [texts[24], texts[32]]  # only chunks 3 and 4 were embedded again
    assert np.array_equal(np.load(workdir / "out.npy"), reference)
    assert not partial.exists()


def console_script() -> list[str]:
    "The installed `nomic_embed_embed` script, or the same entry point through this Python when it is not installed."
    script = Path(sys.executable).parent / "nomic_embed_embed"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from nomic_embed.cli import embed; embed()"]


SUBPROCESS_ENV = os.environ | {"OMP_NUM_THREADS": "1"}  # tiny model: avoid OpenMP contention on shared cores


def test_console_script_runs_as_a_process(model_dir, workdir):
    source = write_txt(workdir / "news.txt", lee_texts(5))
    common = console_script() + ["--model", str(model_dir), "--task", "clustering", "--quiet"]
    done = subprocess.run(common + ["--input", str(source), "--output", str(workdir / "out.npy")], capture_output=True, text=True,
                          cwd=REPO, env=SUBPROCESS_ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote 5 embeddings of dimension 128" in done.stderr
    assert np.load(workdir / "out.npy").shape == (5, 128)
    bad = write_txt(workdir / "bad.txt", ["fine", ""])  # the same error path, seen from a shell
    done = subprocess.run(common + ["--input", str(bad), "--output", str(workdir / "bad.npy")], capture_output=True, text=True,
                          cwd=REPO, env=SUBPROCESS_ENV, timeout=300)
    assert done.returncode == 2 and "bad.txt, line 2 is empty" in done.stderr and "Traceback" not in done.stderr


def write_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str) -> Path:
    """Put `folder` into a hub cache as revision `commit` of `repo_id`, in huggingface_hub's layout: content-addressed blobs,
    a snapshot of relative symlinks, refs/main naming the commit. Returns the snapshot directory."""
    import hashlib
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_hub_id_from_the_cache(model_dir, workdir):
    "A hub id resolves through a real hub cache with HF_HUB_OFFLINE=1: the same vectors as the directory; an absent id names the fix."
    import huggingface_hub
    cache, commit = workdir / "hub", "0123456789abcdef0123456789abcdef01234567"
    write_hub_cache(cache, "nomic-ai/tiny-test", model_dir, commit)
    scanned = huggingface_hub.scan_cache_dir(cache)  # huggingface_hub reads it as its own cache
    assert not scanned.warnings, scanned.warnings
    [repo] = scanned.repos
    assert repo.repo_id == "nomic-ai/tiny-test" and [r.commit_hash for r in repo.revisions] == [commit]
    source = write_txt(workdir / "news.txt", lee_texts(6))
    env = SUBPROCESS_ENV | {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    common = console_script() + ["--task", "search_query", "--input", str(source), "--quiet"]
    for model, name in ((["--model", str(model_dir)], "dir.npy"), (["--model", "nomic-ai/tiny-test"], "hub.npy"),
                        (["--model", "nomic-ai/tiny-test", "--revision", commit], "pinned.npy")):
        done = subprocess.run(common + model + ["--output", str(workdir / name)], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(workdir / "hub.npy"), np.load(workdir / "dir.npy"))
    np.testing.assert_array_equal(np.load(workdir / "pinned.npy"), np.load(workdir / "dir.npy"))
    done = subprocess.run(common + ["--model", "nomic-ai/not-cached", "--output", str(workdir / "absent.npy")], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 2 and f"is not in the hub cache {cache}" in done.stderr and "HF_HUB_OFFLINE" in done.stderr, done.stderr
    assert not (workdir / "absent.npy").exists()


@pytest.mark.slow
def test_kill_and_resume_gives_identical_output(model_dir, workdir):
    "A real SIGKILL in the middle of a run; --resume finishes it and the file equals an uninterrupted run."
    texts = lee_texts(200)
    source = write_txt(workdir / "news.txt", texts)
    base = console_script() + ["--model", str(model_dir), "--task", "search_document", "--input", str(source),
                               "--chunk-size", "10", "--batch-size", "2", "--quiet"]
    subprocess.run(base + ["--output", str(workdir / "reference.npy")], check=True, cwd=REPO, env=SUBPROCESS_ENV, timeout=600)
    process = subprocess.Popen(base + ["--output", str(workdir / "out.npy")], cwd=REPO, env=SUBPROCESS_ENV)
    partial = workdir / "out.npy.partial"
    deadline = time.time() + 300
    while len(list(partial.glob("chunk-*.npy"))) < 3 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(partial.glob("chunk-*.npy")))
    assert 3 <= finished < 20 and not (workdir / "out.npy").exists(), f"kill came too late ({finished} chunks)"
    subprocess.run(base + ["--output", str(workdir / "out.npy"), "--resume"], check=True, cwd=REPO, env=SUBPROCESS_ENV, timeout=600)
    assert np.array_equal(np.load(workdir / "out.npy"), np.load(workdir / "reference.npy"))
    assert not partial.exists()


# ---- bad input: each case fails clearly and leaves nothing behind ----------------------------------------

BAD_FILES = [  # (file name, bytes, expected message)
    ("empty.txt", b"", "is empty; it must hold at least one text"),
    ("blank_line.txt", b"first text\n\nthird text\n", "blank_line.txt, line 2 is empty or whitespace only"),
    ("whitespace.txt", b"first text\n \t \nthird text\n", "whitespace.txt, line 2 is empty or whitespace only"),
    ("latin1.txt", "first text\nsecond text\nna\u00efve caf\u00e9\n".encode("latin-1"), "latin1.txt, line 3 is not valid UTF-8"),
    ("not_json.jsonl", b'{"text": "fine"}\n{"text": "missing brace"\n', "not_json.jsonl, line 2 is not valid JSON"),
    ("no_field.jsonl", b'{"text": "fine"}\n{"body": "other field"}\n', "no_field.jsonl, line 2 has no field 'text' (keys: body)"),
    ("null_field.jsonl", b'{"text": "fine"}\n{"text": null}\n', "null_field.jsonl, line 2: field 'text' is null, not a string"),
    ("number_field.jsonl", b'{"text": 42}\n', "number_field.jsonl, line 1: field 'text' is int, not a string"),
    ("empty_field.jsonl", b'{"text": "   "}\n', "empty_field.jsonl, line 1 is empty or whitespace only"),
    ("blank.jsonl", b'{"text": "fine"}\n\n', "blank.jsonl, line 2 is blank"),
]


@pytest.mark.parametrize("name,content,message", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_input_file(model_dir, workdir, name, content, message):
    (workdir / name).write_bytes(content)
    status, err = run_cli("--model", model_dir, "--task", "search_document", "--input", workdir / name, "--output", workdir / "out.npy")
    assert status == 2 and message in err, err
    assert "Traceback" not in err
    assert_nothing_written(workdir, {name})


def test_unknown_task(model_dir, workdir):
    source = write_txt(workdir / "in.txt", ["a real sentence"])
    status, err = run_cli("--model", model_dir, "--task", "search", "--input", source, "--output", workdir / "out.npy")
    assert status == 2 and "invalid choice: 'search'" in err and "search_query" in err
    assert_nothing_written(workdir, {"in.txt"})


def test_missing_model_directory(workdir):
    source = write_txt(workdir / "in.txt", ["a real sentence"])
    status, err = run_cli("--model", workdir / "no-such-model", "--task", "search_query", "--input", source, "--output", workdir / "out.npy")
    assert status == 2 and "is neither a model directory nor a hub id" in err, err
    assert_nothing_written(workdir, {"in.txt"})
    with pytest.raises(FileNotFoundError, match="neither a model directory nor a hub id"):
        Embedder.from_pretrained(workdir / "no-such-model")


def test_missing_input_file(model_dir, workdir):
    status, err = run_cli("--model", model_dir, "--task", "search_query", "--input", workdir / "absent.txt", "--output", workdir / "out.npy")
    assert status == 2 and "absent.txt' does not exist" in err
    assert_nothing_written(workdir, set())


@pytest.mark.parametrize("case", ["missing_dir", "parent_is_file", "read_only_dir", "bad_suffix"])
def test_output_not_writable(model_dir, workdir, case):
    source = write_txt(workdir / "in.txt", ["a real sentence"])
    if case == "missing_dir":
        output, message = workdir / "no" / "such" / "out.npy", "does not exist (or is not a directory)"
    elif case == "parent_is_file":
        output, message = source / "out.npy", "does not exist (or is not a directory)"
    elif case == "read_only_dir":
        if os.geteuid() == 0:
            pytest.skip("root ignores directory permissions")
        (workdir / "locked").mkdir(mode=0o500)
        output, message = workdir / "locked" / "out.npy", "cannot write to the output directory"
    else:
        output, message = workdir / "out.csv", "output must end in .npy or .parquet"
    status, err = run_cli("--model", model_dir, "--task", "search_query", "--input", source, "--output", output)
    assert status == 2 and message in err, err
    assert_nothing_written(workdir, {"in.txt", "locked"})


# ---- the same rules in the Python API ----------------------------------------------------------------


@pytest.mark.parametrize("texts,error,message", [
    (["fine", None], TypeError, r"texts\[1\] is NoneType"),
    (["fine", 7], TypeError, r"texts\[1\] is int"),
    (["fine", ""], ValueError, r"texts\[1\] is empty or whitespace only"),
    (["fine", " \n\t"], ValueError, r"texts\[1\] is empty or whitespace only"),
    ("a single string", TypeError, "wrap it in a list"),
])
def test_encode_rejects_bad_texts(embedder, texts, error, message):
    with pytest.raises(error, match=message):
        embedder.encode(texts, "search_query")


def test_encode_rejects_unknown_task(embedder):
    with pytest.raises(ValueError, match="task must be one of search_query, search_document, classification, clustering; got 'query'"):
        embedder.encode(["a real sentence"], "query")


def test_embed_file_bad_input_raises_plain_exceptions(model_dir, workdir):
    "The Python function behind the CLI raises the same errors as exceptions (no sys.exit)."
    (workdir / "in.txt").write_bytes(b"fine\n\n")
    with pytest.raises(ValueError, match="line 2 is empty"):
        embed_file(model_dir, "search_query", workdir / "in.txt", workdir / "out.npy")
    assert_nothing_written(workdir, {"in.txt"})


# ---- Matryoshka sizes and quantised vectors (v1.5) -----------------------------------------------------


@pytest.fixture(scope="session")
def v15_dir(model_dir, tmp_path_factory) -> Path:
    "The tiny model with a trained-looking last LayerNorm, exported in the released layout with the Matryoshka layer-norm flag."
    model = load_model(model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.encoder.layers[-1].norm2.bias.copy_(0.2 + 0.5 * torch.randn(128, generator=generator))
    return Embedder(model, load_tokenizer(), device="cpu", matryoshka_layer_norm=True).save_pretrained(
        tmp_path_factory.mktemp("v15") / "tiny-v15", format="nomic")


def by_hand(embedder: Embedder, texts: list[str], task: str, d: int, layer_norm: bool) -> np.ndarray:
    "The pooled vectors (nothing applied), then v1.5's layer norm (if asked), the first `d` coordinates, L2 normalisation, in float64."
    from nomic_embed.embed import add_prefix
    from nomic_embed.inference import embed_texts
    pooled = embed_texts(embedder.model, embedder.tokenizer, add_prefix(texts, task), 8192, normalize=False).astype(np.float64)
    if layer_norm:
        pooled = (pooled - pooled.mean(1, keepdims=True)) / np.sqrt(pooled.var(1, keepdims=True) + 1e-5)
    return pooled[:, :d] / np.linalg.norm(pooled[:, :d], axis=1, keepdims=True)


@pytest.mark.parametrize("d", [128, 64, 32, 16])
def test_encode_dimensionality_follows_the_checkpoint(embedder, v15_dir, d):
    texts = lee_texts(12)
    v15 = Embedder.from_pretrained(v15_dir, device="cpu")  # the flag comes from the directory's config.json
    assert v15.matryoshka_layer_norm and not embedder.matryoshka_layer_norm
    assert np.abs(v15.encode(texts, "search_query", dimensionality=d) - by_hand(v15, texts, "search_query", d, True)).max() <= 1e-6
    assert np.abs(embedder.encode(texts, "search_query", dimensionality=d) - by_hand(embedder, texts, "search_query", d, False)).max() <= 1e-6
    plain = Embedder.from_pretrained(v15_dir, device="cpu", matryoshka_layer_norm=False)  # the caller may override it
    assert np.abs(plain.encode(texts, "search_query", dimensionality=d) - by_hand(plain, texts, "search_query", d, False)).max() <= 1e-6
    unnormalised = v15.encode(texts, "classification", dimensionality=d)  # classification: layer norm and cut, not normalised
    assert abs(np.linalg.norm(unnormalised, axis=1).mean() - 1) > 1e-2


def test_sentence_transformers_export_at_every_truncate_dim(v15_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    v15 = Embedder.from_pretrained(v15_dir, device="cpu")
    st = SentenceTransformer(str(v15.save_sentence_transformers(tmp_path / "st")), device="cpu")  # no trust_remote_code
    assert [type(module).__name__ for module in st] == ["Transformer", "Pooling", "LayerNorm", "Normalize"]
    texts = lee_texts(10)
    for d in (128, 64, 32, 16):
        theirs = st.encode(texts, prompt_name="search_document", truncate_dim=d, normalize_embeddings=True)
        np.testing.assert_allclose(theirs, v15.encode(texts, "search_document", dimensionality=d), atol=1e-5)
        loaded = SentenceTransformer(str(tmp_path / "st"), device="cpu", truncate_dim=d)
        cosine = loaded.similarity(loaded.encode(texts[:3], prompt_name="search_query"), loaded.encode(texts, prompt_name="search_document"))
        ours = v15.encode(texts[:3], "search_query", dimensionality=d) @ v15.encode(texts, "search_document", dimensionality=d).T
        np.testing.assert_allclose(cosine.numpy(), ours, atol=1e-5)  # without re-normalising, the cosine is the same


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_quantised_bytes_equal_sentence_transformers(v15_dir, precision):
    from sentence_transformers.util import quantize_embeddings as st_quantize_embeddings
    from nomic_embed.embed import quantization_ranges, quantize_embeddings
    floats = Embedder.from_pretrained(v15_dir, device="cpu").encode(lee_texts(120), "search_document", dimensionality=48, max_length=128)
    cases = [(floats, None)] + ([(floats[:20], quantization_ranges(floats[20:]))] if precision.endswith("int8") else [])
    for vectors, ranges in cases:
        ours, theirs = quantize_embeddings(vectors, precision, ranges), st_quantize_embeddings(vectors, precision, ranges=ranges)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and ours.tobytes() == theirs.tobytes()


def test_cli_dimensionality_and_precision(v15_dir, workdir):
    from nomic_embed.embed import quantization_ranges
    texts = lee_texts(20)
    source = write_txt(workdir / "news.txt", texts)
    v15 = Embedder.from_pretrained(v15_dir, device="cpu")
    np.save(workdir / "ranges.npy", quantization_ranges(v15.encode(lee_texts(120), "search_document", dimensionality=32)))
    common = ["--model", v15_dir, "--task", "search_document", "--input", source, "--dimensionality", 32, "--chunk-size", 7, "--quiet"]
    for precision, output, extra in [("float32", "f.npy", []), ("ubinary", "b.parquet", []), ("int8", "i.npy", ["--ranges", workdir / "ranges.npy"])]:
        status, err = run_cli(*common, "--precision", precision, "--output", workdir / output, *extra)
        assert status == 0, err
        ranges = np.load(workdir / "ranges.npy") if extra else None
        expected = v15.encode(texts, "search_document", dimensionality=32, precision=precision, ranges=ranges)
        stored = load_embeddings(workdir / output)
        assert stored.dtype == expected.dtype and stored.shape == expected.shape
        np.testing.assert_allclose(stored.astype(np.float64), expected.astype(np.float64), atol=1e-5 if precision == "float32" else 0)


def test_cli_resume_refuses_another_precision(v15_dir, workdir, monkeypatch):
    source = write_txt(workdir / "news.txt", lee_texts(20))
    calls = []
    original = Embedder.encode

    def crashing(self, chunk, *a, **k):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, chunk, *a, **k)

    monkeypatch.setattr(Embedder, "encode", crashing)
    args = ["--model", v15_dir, "--task", "search_query", "--input", source, "--chunk-size", 7, "--output", workdir / "out.npy", "--quiet"]
    status, err = run_cli(*args, "--precision", "binary")
    assert status == 130 and "stopped by SIGINT; 1 finished chunk(s)" in err, err
    monkeypatch.setattr(Embedder, "encode", original)
    status, err = run_cli(*args, "--precision", "ubinary", "--resume")
    assert status == 2 and "precision: 'binary' then, 'ubinary' now" in err, err
    assert run_cli(*args, "--precision", "binary", "--resume")[0] == 0
    assert load_embeddings(workdir / "out.npy").shape == (20, 16) and load_embeddings(workdir / "out.npy").dtype == np.int8


@pytest.mark.parametrize("extra,message", [
    (["--precision", "int8"], "--precision int8 needs --ranges FILE.npy"),
    (["--precision", "uint8", "--ranges", "absent.npy"], "ranges file"),
    (["--precision", "int4"], "invalid choice: 'int4'"),
    (["--dimensionality", "256"], "dimensionality must be an integer from 1 to the model's embedding size 128"),
    (["--dimensionality", "0"], "dimensionality must be >= 1"),
    (["--dimensionality", "32", "--precision", "int8", "--ranges", "wrong.npy"], "ranges have shape (2, 64), but the vectors have 32 coordinates"),
])
def test_cli_bad_size_or_precision(v15_dir, workdir, extra, message):
    source = write_txt(workdir / "in.txt", lee_texts(3))
    np.save(workdir / "wrong.npy", np.zeros((2, 64), np.float32))
    extra = [str(workdir / e) if e.endswith(".npy") else e for e in extra]
    status, err = run_cli("--model", v15_dir, "--task", "search_query", "--input", source, "--output", workdir / "out.npy", *extra)
    assert status == 2 and message in err, err
    assert_nothing_written(workdir, {"in.txt", "wrong.npy"})


def test_search_helpers():
    from nomic_embed.embed import dequantize_embeddings, hamming_distances, quantize_embeddings, quantized_search
    generator = np.random.default_rng(0)  # random vectors: an arithmetic check of the bit counting
    vectors = generator.standard_normal((50, 37)).astype(np.float32)  # 37 bits: the last byte is padded
    codes = quantize_embeddings(vectors, "ubinary")
    signs = vectors > 0
    np.testing.assert_array_equal(hamming_distances(codes, codes), (signs[:, None] != signs[None]).sum(-1))
    np.testing.assert_array_equal(hamming_distances(quantize_embeddings(vectors, "binary"), codes), hamming_distances(codes, codes))  # either storage
    np.testing.assert_array_equal(dequantize_embeddings(codes, "ubinary", dimensionality=37), np.where(signs, 1.0, -1.0))
    scores, top = quantized_search(vectors[:5], codes, "ubinary", k=4)
    assert scores.shape == top.shape == (5, 4) and (top[:, 0] == np.arange(5)).all() and (np.diff(scores, axis=1) <= 0).all()
    with pytest.raises(ValueError, match="need the ranges they were quantised with"):
        quantized_search(vectors[:5], quantize_embeddings(vectors, "int8"), "int8")
