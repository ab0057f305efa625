"""`nomic_embed_reproduce` as a user runs it: the whole chain at the micro budget (the file set, the tables, the
chain's improvements with their intervals), a changed setting refused, a finished run kept, and (slow) a SIGKILL
mid-stage followed by a rerun that ends with the results of an uninterrupted run, and a small scaling sweep.

Run: python -m pytest tests/test_reproduce.py  (add -m slow for the slow tests)."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import ENV, bin_path

REPRODUCE = [bin_path("nomic_embed_reproduce")] if Path(bin_path("nomic_embed_reproduce")).exists() else [
    sys.executable, "-c", "from nomic_embed.cli import reproduce; reproduce()"]
FILES = {"settings.json", "results.json", "results.md", "stages.png", "claims.png", "phases", "runs", "pools",
         "curated", "evaluation", "probe", "mlm_loss.json"}
PHASES = {"mlm", "pairs", "teacher", "filter", "mine", "train", "evaluate", "probe", "mlm_loss"}


def scores(out: Path) -> dict:
    "The results without anything that depends on time: the tables (every model's scores) and the filter."
    payload = json.loads((out / "results.json").read_text())
    return {"tables": payload["tables"], "filter": payload["filter"]}


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory) -> Path:
    "One uninterrupted micro reproduction (a few CPU minutes)."
    out = tmp_path_factory.mktemp("reproduce") / "micro"
    done = subprocess.run(REPRODUCE + ["--budget", "micro", "--out", str(out)], capture_output=True, text=True,
                          env=ENV, timeout=3600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return out


def test_micro_chain_writes_every_file_and_improves(micro_run):
    assert FILES <= {p.name for p in micro_run.iterdir()}
    assert {p.stem for p in (micro_run / "phases").glob("*.json")} == PHASES
    values = json.loads((micro_run / "results.json").read_text())["tables"]["values"]
    primary = {arm: v["primary"] for arm, v in values.items()}
    print({arm: round(p["estimate"], 2) for arm, p in primary.items()})
    assert set(primary) == {"random init", "stage 1 (MLM)", "stage 2", "stage 3"}
    assert primary["random init"]["seeds"] == [2]  # the floor at its two micro seeds
    # contrastive training is what makes retrieval work: stage 2 clears the MLM model and the floor
    assert primary["stage 2"]["estimate"] > primary["stage 1 (MLM)"]["estimate"] + 3
    assert primary["stage 2"]["estimate"] > primary["random init"]["estimate"]
    for p in primary.values():  # every score carries its interval
        assert p["low"] <= p["estimate"] <= p["high"] and p["se"] > 0
    markdown = (micro_run / "results.md").read_text()
    assert "**Table A.**" in markdown and "**Table B.**" in markdown and "**Table C.**" in markdown
    tables = json.loads((micro_run / "results.json").read_text())["tables"]
    assert {row["model"] for row in tables["probe"]} == {"stage 1 (MLM)", "random init"}
    assert {row["model"] for row in tables["mlm loss"]} == {"stage 1 (MLM)", "unigram", "bigram"}


def test_positive_aware_mining_of_the_stage3_pool(micro_run, tmp_path):
    "The micro run's stage-3 pool mined again at NV-Retriever's 0.95: same rows, some candidates skipped, loadable."
    from nomic_embed.pairs import PairSource
    from nomic_embed.reproduce import BUDGETS, curate_config, run_curation
    plain = json.loads((micro_run / "curated" / "stage3" / "report.json").read_text())["sources"]
    config = {**curate_config(micro_run / "pools", BUDGETS["micro"]), "positive_aware_ratio": 0.95}
    aware = run_curation("mine", config, tmp_path / "positive_aware")["sources"]
    assert {name: s["pairs"] for name, s in aware.items()} == {name: s["pairs"] for name, s in plain.items()}
    skipped = {name: s["positive_aware_skipped"] for name, s in aware.items()}
    print(skipped)
    assert all(n == 0 for name, n in skipped.items() if aware[name]["negatives"] != "mined")
    assert sum(skipped.values()) > 0  # the teacher scores some top-20 candidates within 5% of the positive
    for name in aware:
        assert PairSource(name=name, data_files=[str(f) for f in (tmp_path / "positive_aware" / name).glob("*.parquet")]
                          ).load().num_rows == aware[name]["pairs"]


def test_a_changed_setting_is_refused(micro_run):
    done = subprocess.run(REPRODUCE + ["--budget", "small", "--out", str(micro_run)], capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert done.returncode == 2 and "holds a reproduction with other settings" in done.stderr, done.stderr[-2000:]


def test_a_finished_run_is_kept(micro_run):
    "Run again with the same settings: every phase is kept, nothing is retrained, the results are the same."
    before = scores(micro_run)
    done = subprocess.run(REPRODUCE + ["--budget", "micro", "--out", str(micro_run)], capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all("kept" in line for line in done.stdout.splitlines() if line.startswith("["))
    assert scores(micro_run) == before


@pytest.mark.slow
def test_kill_mid_stage_and_rerun_gives_the_uninterrupted_results(micro_run, tmp_path):
    "SIGKILL the reproduction while stage 2 trains in its child process: the child dies with it, the rerun resumes."
    out = tmp_path / "killed"
    process = subprocess.Popen(REPRODUCE + ["--budget", "micro", "--out", str(out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ENV)
    checkpoints = out / "runs" / "stage2" / "seed0" / "checkpoints"
    deadline = time.time() + 1800
    while time.time() < deadline and process.poll() is None and not any(checkpoints.glob("step-*/manifest.json")):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "phases" / "train.json").exists()
    done = subprocess.run(REPRODUCE + ["--budget", "micro", "--out", str(out)], capture_output=True, text=True,
                          env=ENV, timeout=3600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert scores(out) == scores(micro_run)


@pytest.mark.slow
def test_a_scaling_sweep_fits_a_line(tmp_path):
    "Stage 2 of the micro chain at three pool sizes: each point has its FLOPs and interval, and a line is fitted."
    from nomic_embed.reproduce import BUDGETS, run_scaling
    budget = replace(BUDGETS["micro"], sweep=(50, 100, 190), sweep_seeds=(0,), floor_seeds=(0,))
    payload = run_scaling(tmp_path / "scaling", budget, report=lambda line: None)
    flops = [p["FLOPs"] for p in payload["points"]]
    assert flops == sorted(flops) and len(set(flops)) == 3  # more pairs, more steps at the same passes
    assert payload["fit"]["df"] == 1 and (tmp_path / "scaling" / "scaling.png").exists()
    assert {"BM25", "TF-IDF", "random init"} <= set(payload["ladder"])


def test_ablations_added_to_a_finished_run(micro_run, tmp_path):
    """`--ablations first_7` on a finished run: the default arms gain the paired seed, which is scored on the
    primary endpoint only; every claim is still computed on the seeds that have its records. Another arm asked
    for later is trained and joins the tables, the first arm's row unchanged."""
    out = tmp_path / "micro"
    shutil.copytree(micro_run, out)
    done = subprocess.run(REPRODUCE + ["--budget", "micro", "--out", str(out), "--ablations", "first_7"],
                          capture_output=True, text=True, env=ENV, timeout=3600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    tables = json.loads((out / "results.json").read_text())["tables"]
    claims = {row["comparison"]: row for row in tables["C"]}
    assert claims["stage 3 − first_7"]["seeds"] == "2/2"  # the default arm at the ablation's paired seeds
    before_first_7 = claims["stage 3 − first_7"]
    assert claims["stage 3 − stage 2"]["seeds"] == "2/2"
    assert tables["values"]["stage 3"]["suite mean"]["seeds"] == [1]  # the suite at the default seeds only
    # the long-context claim reads the default seeds only: give seed 0 (alone) a long-document record
    from nomic_embed.reproduce import CLAIMS, arm_scores, arms_of, compare_claim, endpoint_draws
    records = {f"stage 3, seed {seed}": {path.name.removesuffix(".record.json"): json.loads(path.read_text())["result"]
                                         for path in (out / "evaluation" / f"stage_3_seed_{seed}").glob("*.json")}
               for seed in (0, 1)}
    seed0 = records["stage 3, seed 0"]
    seed0["long@512"], seed0["long@512-plain_rope"] = seed0["ManPageRetrieval@64"], seed0["ManPageRetrieval@512"]
    endpoints = {"long, dynamic NTK": {"long": "long@512"}, "long, plain RoPE": {"long": "long@512-plain_rope"}}
    long_claim = next(claim for claim in CLAIMS if claim.endpoint == "long")
    estimate = compare_claim(long_claim, records, arms_of(list(records)), endpoints)
    assert estimate.seeds == (1, 1) and estimate.low < estimate.estimate < estimate.high
    records["BM25"] = {"long@512": None}  # a reference row with no record of a task: no score, no error
    draws = endpoint_draws(records, "stage 3, seed 0", endpoints["long, dynamic NTK"])
    assert arm_scores(records, {0: "BM25"}, endpoints["long, dynamic NTK"], draws) is None
    # a later arm on the same run: the ablation phases run again for it, and keep what is done
    trained = json.loads((out / "phases" / "ablation train.json").read_text())
    assert trained["arms"] == ["first_7"]
    more = ["--budget", "micro", "--out", str(out), "--ablations", "first_7,random_negatives"]
    done = subprocess.run(REPRODUCE + more, capture_output=True, text=True, env=ENV, timeout=3600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    again = json.loads((out / "phases" / "ablation train.json").read_text())
    assert again["arms"] == ["first_7", "random_negatives"] and again["seconds"] > trained["seconds"]
    claims = {row["comparison"]: row for row in json.loads((out / "results.json").read_text())["tables"]["C"]}
    assert claims["stage 3 − random_negatives"]["seeds"] == "2/2"
    assert claims["stage 3 − first_7"] == before_first_7


def test_a_second_run_takes_stage1_and_the_probe_from_the_cache(micro_run, tmp_path):
    "A new --out with the same settings: stage 1 and the probe's records are copied from the cache; same results."
    from nomic_embed.reproduce import BUDGETS, probe_cache_file
    out = tmp_path / "again"
    done = subprocess.run(REPRODUCE + ["--budget", "micro", "--out", str(out)], capture_output=True, text=True,
                          env=ENV, timeout=3600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert json.loads((out / "phases" / "mlm.json").read_text())["from cache"] is True
    assert sorted((out / "runs" / "mlm").iterdir()) == sorted(  # a whole run directory, without checkpoints
        out / "runs" / "mlm" / name for name in ("baseline.json", "config.yaml", "final", "loss.png", "metrics.jsonl"))
    starts = {"stage_1_(MLM)": out / "runs" / "mlm" / "final", "random_init": out / "runs" / "random_init" / "seed0"}
    for label, model in starts.items():
        for seed in range(BUDGETS["micro"].probe_seeds):
            cached = probe_cache_file(str(model), seed, BUDGETS["micro"])
            assert cached.read_text() == (out / "probe" / f"{label}-seed{seed}.json").read_text()
    assert scores(out) == scores(micro_run)
