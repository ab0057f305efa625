"""`nomic_embed_curate` as a user runs it: real processes, real torchrun (gloo), SIGTERM and SIGKILL mid-run, the
kept set against the filter chapter's in-memory rule, mined negatives against the positives, bad input, and (slow)
peak memory at two data sizes.

The pairs are real offline text: Wikipedia section heading → body (gensim's sample), 20% of the bodies swapped to
other sections as the filter chapter does, in six parquet shards; the Python language reference's topics as a
second source for random negatives; WordNet synonyms for the memory test. The teacher is the offline all-MiniLM-L6-v2,
reading 32 tokens per text to keep the runs short."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ENV, ROOT, TORCHRUN

SHARDS, ROWS = 6, 40  # six input files of 40 pairs
SETTINGS = {"teacher_max_length": 32, "batch_size": 32, "sample_size": 60, "negatives_pool": 12, "num_negatives": 7}


CURATE = str(Path(sys.executable).parent / "nomic_embed_curate")  # the console script beside this Python


def curate_cli(*args: str, torchrun: bool = False) -> list[str]:
    "The command line of `nomic_embed_curate`, in one process or two under torchrun."
    return (TORCHRUN + ["--no-python", CURATE] if torchrun else [CURATE]) + list(args)


def files(directory: Path) -> dict[str, str]:
    "Every file under `directory` with the SHA-256 of its bytes."
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.rglob("*")) if p.is_file()}


def write_yaml(path: Path, data: dict) -> Path:
    import yaml
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    "The noisy Wikipedia pairs as parquet shards, which rows were swapped, and the filter and mine configs."
    import pyarrow as pa
    import pyarrow.parquet as pq
    from nomic_embed.pairs import offline_pairs
    root = tmp_path_factory.mktemp("inputs")
    rows = offline_pairs(["wikipedia_sections"])["wikipedia_sections"][:SHARDS * ROWS]
    rng = np.random.default_rng(0)
    swapped = rng.random(len(rows)) < 0.2
    noisy = [dict(row) for row in rows]
    for i, j in zip(np.flatnonzero(swapped), rng.permutation(np.flatnonzero(swapped))):
        noisy[i]["document"] = rows[j]["document"]
    swapped &= np.array([a["document"] != b["document"] for a, b in zip(noisy, rows)])
    (root / "wiki").mkdir()
    for k in range(SHARDS):
        pq.write_table(pa.Table.from_pylist(noisy[k * ROWS:(k + 1) * ROWS]), root / "wiki" / f"part-{k}.parquet")
    source = {"name": "wiki", "data_files": str(root / "wiki" / "*.parquet"), "query_prefix": "search_query"}
    filter_config = write_yaml(root / "filter.yaml", {"sources": [source], **SETTINGS})
    mine_config = write_yaml(root / "mine.yaml", {**SETTINGS, "sources": [  # the filter's output, and a second source
        {"name": "wiki", "data_files": "filtered/wiki/*.parquet", "query_prefix": "search_query", "negatives": "mined"},
        {"name": "topics", "offline": "pydoc_topics", "query_prefix": "search_query", "negatives": "random"}]})
    return {"noisy": noisy, "swapped": swapped, "filter": filter_config, "mine": mine_config}


def run_both(directory: Path, inputs: dict, torchrun: bool = False) -> dict[str, subprocess.CompletedProcess]:
    "`filter` then `mine` (on the filter's output) with `directory` as working directory; outputs under filtered/ and mined/."
    directory.mkdir(parents=True, exist_ok=True)
    done = {}
    for command, output in (("filter", "filtered"), ("mine", "mined")):
        done[command] = subprocess.run(curate_cli(command, "--config", str(inputs[command]), "--output", output, "--log-every", "0.5",
                                                  torchrun=torchrun), cwd=directory, env=ENV, capture_output=True, text=True)
        assert done[command].returncode == 0, done[command].stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def single(tmp_path_factory, inputs):
    "One process: filter, then mine; the working directory and the two runs' output."
    directory = tmp_path_factory.mktemp("single")
    return directory, run_both(directory, inputs)


def test_help_and_bad_arguments_answer_without_torch():
    probe = ("import sys\nfrom nomic_embed.cli import curate as main\n"
             "for argv in (['--help'], ['filter', '--help'], ['mine', '--config', 'no/such.yaml', '--output', 'x']):\n"
             "    try: main(argv)\n    except SystemExit as e: print('exit', e.code)\n"
             "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'sentence_transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, cwd=ROOT)
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "[]", f"heavy modules imported for --help / bad arguments: {lines[-1]}"
    assert [l for l in lines if l.startswith("exit")] == ["exit 0", "exit 0", "exit 2"]
    assert "usage: nomic_embed_curate" in done.stdout and "config 'no/such.yaml' does not exist" in done.stderr


@pytest.mark.parametrize("problem", ["missing column", "empty shard", "unknown source", "unknown offline source", "bad value"])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, capsys, problem):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from nomic_embed.cli import curate as main
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"query": ["what is a lemma"], "document": ["a word as it appears in a dictionary"]}), good)
    source, flags, message = {"name": "s", "data_files": [str(good)]}, [], None
    if problem == "missing column":
        pq.write_table(pa.table({"query": ["q"], "body": ["b"]}), tmp_path / "bad.parquet")
        source["data_files"].append(str(tmp_path / "bad.parquet"))
        message = "no column 'document' (it has ['body', 'query']); map the source's columns with `columns:`"
    elif problem == "empty shard":
        pq.write_table(pa.table({"query": pa.array([], pa.string()), "document": pa.array([], pa.string())}), tmp_path / "bad.parquet")
        source["data_files"].append(str(tmp_path / "bad.parquet"))
        message = "bad.parquet: the shard is empty; remove it from the source's data_files"
    elif problem == "unknown source":
        flags, message = ["--sources", "s,t"], "unknown source(s) ['t']; the config has ['s']"
    elif problem == "unknown offline source":
        source = {"name": "s", "offline": "encyclopaedia"}
        message = "source 's': offline must be one of"
    else:
        flags, message = ["--top-k", "0"], "top_k must be an integer >= 1; got 0"
    config = write_yaml(tmp_path / "config.yaml", {"sources": [source]})
    with pytest.raises(SystemExit) as exit_info:
        main(["filter", "--config", str(config), "--output", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "nothing may be written for bad input"


def test_kept_set_equals_consistency_filter_in_memory(single, inputs):
    "The CLI's kept pairs are exactly consistency_filter's on the same vectors; fresh in-process vectors agree."
    import pyarrow.parquet as pq
    from nomic_embed.curate import load_curate_config
    from nomic_embed.filter import consistency_filter, sentence_transformer_encoder
    directory, runs = single
    config, noisy = load_curate_config(inputs["filter"]), inputs["noisy"]
    work = directory / "filtered" / "work" / "wiki"
    vectors = {what: np.concatenate([np.load(work / f"{k:05d}.{what}.npy") for k in range(SHARDS)]) for what in ("query", "document")}
    assert vectors["query"].dtype == np.float16 and vectors["query"].shape == (SHARDS * ROWS, 384)
    documents = [row["document"] for row in noisy]
    keep = consistency_filter(vectors["query"].astype(np.float32), vectors["document"].astype(np.float32), config.top_k,
                              config.sample_size, documents, config.seed, config.block_size)
    kept = [row["query"] for f in sorted((directory / "filtered" / "wiki").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]
    assert kept == [noisy[i]["query"] for i in np.flatnonzero(keep)]
    report = json.loads((directory / "filtered" / "report.json").read_text())["sources"]["wiki"]
    assert (report["pairs"], report["kept"], report["samples"]) == (SHARDS * ROWS, int(keep.sum()), 4)
    swapped = inputs["swapped"]
    true_kept, noise_removed = keep[~swapped].mean(), 1 - keep[swapped].mean()
    print(f"kept {keep.sum()}/{len(keep)}: {true_kept:.1%} of true pairs, removed {noise_removed:.1%} of the {swapped.sum()} swapped ones")
    assert noise_removed > 0.9 and true_kept > 0.5
    teacher = sentence_transformer_encoder(batch_size=config.batch_size, max_seq_length=config.teacher_max_length)
    fresh_q, fresh_d = teacher([r["query"] for r in noisy]).astype(np.float16), teacher(documents).astype(np.float16)
    assert np.abs(fresh_q.astype(np.float32) - vectors["query"]).max() < 2e-3
    fresh = consistency_filter(fresh_q.astype(np.float32), fresh_d.astype(np.float32), config.top_k, config.sample_size, documents, config.seed)
    assert (fresh == keep).mean() >= 0.99


def test_mined_negatives_never_hold_a_positive_and_train_directly(single):
    import pyarrow.parquet as pq
    from nomic_embed.pairs import PairDataset, load_pair_config, offline_pairs
    directory, runs = single
    mined = [row for f in sorted((directory / "mined" / "wiki").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]
    drawn = [row for f in sorted((directory / "mined" / "topics").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]
    for rows in (mined, drawn):
        positives = {}
        for row in rows:
            positives.setdefault(row["query"], set()).add(row["document"])
        for row in rows:
            assert len(row["negatives"]) == 12 and len(set(row["negatives"])) == 12
            assert not set(row["negatives"]) & positives[row["query"]], f"a positive of {row['query']!r} is among its negatives"
    assert len(drawn) == len(offline_pairs(["pydoc_topics"])["pydoc_topics"])
    report = json.loads((directory / "mined" / "report.json").read_text())["sources"]
    assert report["wiki"]["negatives"] == "mined" and report["wiki"]["built"] == len(mined) and report["wiki"]["short"] == 0
    assert report["topics"]["negatives"] == "random" and report["topics"]["built"] == len(drawn)
    # the written pairs config is what the trainer reads: 7 of each row's 12 negatives per epoch
    os.chdir(directory)
    try:
        config = load_pair_config(directory / "mined" / "pairs.yaml")
        dataset = PairDataset.from_sources(config["sources"], num_negatives=config["num_negatives"])
    finally:
        os.chdir(ROOT)
    assert dataset.source_sizes == {"wiki": len(mined), "topics": len(drawn)}
    item = dataset[0]
    assert item["query"].startswith("search_query: ") and len(item["negatives"]) == 7
    # plain progress lines in a log, not carriage-return redraws
    log = runs["filter"].stderr
    assert "filter embed:" in log and "\r" not in log
    print(runs["filter"].stdout)


def test_torchrun_two_processes_write_what_one_writes(tmp_path, single, inputs):
    "Same keep-masks, same mined and random negatives: the output shards are byte-identical."
    directory, _ = single
    run_both(tmp_path, inputs, torchrun=True)
    for output in ("filtered", "mined"):
        one, two = files(directory / output), files(tmp_path / output)
        assert one.keys() == two.keys()
        different = [name for name in one if one[name] != two[name]]
        assert not different, f"{output}: files differ between 1 and 2 processes: {different[:5]}"
    assert json.loads((tmp_path / "filtered" / "report.json").read_text())["sources"]["wiki"]["kept"] > 0


def wait_for(directory: Path, pattern: str, process: subprocess.Popen, timeout: float = 240) -> None:
    "Wait until a file matching `pattern` exists under `directory` (the run has passed that point)."
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and not list(directory.glob(pattern)):
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before it could be interrupted"


def test_interrupted_runs_resume_to_identical_files(tmp_path, single, inputs):
    "SIGTERM while embedding (clean exit, resume hint), SIGKILL later in the resumed run, then a rerun: the same bytes."
    directory, _ = single
    command = curate_cli("filter", "--config", str(inputs["filter"]), "--output", "filtered", "--no-progress")
    victim = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "filtered" / "work" / "wiki", "00000.embedded.done", victim)
    victim.send_signal(signal.SIGTERM)
    _, err = victim.communicate(timeout=120)
    assert victim.returncode == 143 and "stopped by SIGTERM; finished shards are kept in filtered: run the same command again to resume" in err
    embedded = len(list((tmp_path / "filtered" / "work" / "wiki").glob("*.embedded.done")))
    assert 1 <= embedded < SHARDS

    victim = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(tmp_path / "filtered" / "work" / "wiki", f"{embedded:05d}.embedded.done", victim)  # the next shard is done
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "filtered" / "report.json").exists()

    resumed = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference, result = files(directory / "filtered"), files(tmp_path / "filtered")
    assert reference.keys() == result.keys(), sorted(set(reference) ^ set(result))
    assert [name for name in reference if reference[name] != result[name]] == []
    print(f"SIGTERM after {embedded}/{SHARDS} shards embedded, SIGKILL after {embedded + 1}; {len(result)} files identical")


def test_other_arguments_into_the_same_output_are_refused(single, inputs, capsys):
    from nomic_embed.cli import curate as main
    directory, _ = single
    with pytest.raises(SystemExit) as exit_info:
        main(["filter", "--config", str(inputs["filter"]), "--output", str(directory / "filtered"), "--sample-size", "1000"])
    assert exit_info.value.code == 2 and "sample_size differ" in capsys.readouterr().err


def test_hub_layout_lists_one_shard_per_data_file(tmp_path):
    "A `path:` source (a hub dataset; here a local folder in the same layout) is sharded by its split's data files."
    import pyarrow as pa
    import pyarrow.parquet as pq
    from nomic_embed.curate import list_shards, read_pair_shard
    (tmp_path / "data").mkdir()
    for k in range(3):
        pq.write_table(pa.table({"query": [f"topic {k}"], "pos": [f"text of topic {k}"]}), tmp_path / "data" / f"train-0000{k}-of-00003.parquet")
    shards = list_shards("hub", {"path": str(tmp_path), "split": "train"}, rows_per_shard=10)
    assert [Path(s.location).name for s in shards] == [f"train-0000{k}-of-00003.parquet" for k in range(3)]
    assert read_pair_shard(shards[2], {"document": "pos"}).to_pylist() == [{"query": "topic 2", "document": "text of topic 2"}]
    with pytest.raises(ValueError, match="lists no files for config 'default', split 'validation'"):
        list_shards("hub", {"path": str(tmp_path), "split": "validation"}, rows_per_shard=10)


def test_full_scale_configs(monkeypatch):
    "The curate configs and the stage-3 configs as the report has them (max length 2048; the ablated source set)."
    monkeypatch.chdir(ROOT)
    from nomic_embed.curate import load_curate_config
    from nomic_embed.train import load_config
    pretrain, finetune = load_curate_config("configs/curate_pretrain.yaml"), load_curate_config("configs/curate_finetune.yaml")
    assert (len(pretrain.sources), pretrain.teacher, pretrain.top_k, pretrain.sample_size) == (29, "thenlper/gte-base", 2, 1_000_000)
    modes = {s["name"]: s["negatives"] for s in finetune.sources}
    assert {n for n, m in modes.items() if m == "mined"} == {"msmarco", "nq", "hotpotqa", "fever"}
    assert {n for n, m in modes.items() if m == "random"} == {"nli", "reddit", "medi_wiki", "medi_stackexchange", "medi_flickr", "medi_supernli"}
    full = load_config("configs/contrastive_finetune.yaml")
    assert (full.data.query_max_length, full.data.document_max_length, full.data.num_negatives) == (2048, 2048, 7)
    assert [s["name"] for s in full.data.sources] == [s["name"] for s in finetune.sources]
    assert all(s["data_files"] == f"data/curated/finetune/{s['name']}/*.parquet" for s in full.data.sources)
    ablated = load_config("configs/contrastive_finetune_ablated.yaml")
    assert sorted(s["name"] for s in ablated.data.sources) == ["msmarco", "nli", "nq", "reddit"]  # §4.2.4: without FEVER, HotpotQA, MEDI
    assert ablated.output_dir != full.output_dir and ablated.init_from == full.init_from
    table_3 = {"msmarco": 484_864, "nli": 275_200, "reddit": 199_680, "medi_supernli": 177_408, "hotpotqa": 169_728, "fever": 139_776,
               "medi_stackexchange": 100_352, "nq": 69_888, "medi_flickr": 50_944, "medi_wiki": 24_832}
    assert sum(table_3.values()) == 1_692_672 and sum(table_3.values()) // full.training.global_batch_size == 6_612
    assert "6,612 steps" in (ROOT / "configs" / "contrastive_finetune.yaml").read_text()


def wordnet_synonyms(n: int) -> list[dict]:
    "The first `n` (lemma → another lemma of its synset) pairs of WordNet's nouns."
    pairs = []
    with open("/usr/share/wordnet/data.noun", encoding="latin-1") as lines:
        for line in lines:
            if line.startswith(" "):
                continue
            fields = line.split()
            count = int(fields[3], 16)
            lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
            if count >= 2 and lemmas[0].lower() != lemmas[1].lower():
                pairs.append({"query": lemmas[0], "document": lemmas[1]})
                if len(pairs) == n:
                    return pairs
    raise AssertionError(f"only {len(pairs)} synonym pairs in WordNet")


def max_rss_mb(command: list[str], cwd: Path) -> float:
    "Run `command` and return its peak resident memory (MB), from the kernel's accounting of that one child."
    process = subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, process.stderr.read()[-3000:]
    return usage.ru_maxrss / 1024  # kilobytes on Linux


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").exists(), reason="needs the wordnet-base Debian package")
def test_peak_memory_is_bounded_by_shard_and_sample_size(tmp_path):
    "Filtering 1,500 and 12,000 pairs in shards of 500 and samples of ~500: the same peak memory."
    import pyarrow as pa
    import pyarrow.parquet as pq
    small, large = 1500, 12000
    pairs = wordnet_synonyms(large)
    peaks = {}
    for n in (small, large):
        run = tmp_path / f"n{n}"
        (run / "data").mkdir(parents=True)
        for k in range(0, n, 500):
            pq.write_table(pa.Table.from_pylist(pairs[k:k + 500]), run / "data" / f"part-{k // 500:03d}.parquet")
        config = write_yaml(run / "config.yaml", {"sources": [{"name": "synonyms", "data_files": str(run / "data" / "*.parquet"),
                                                               "query_prefix": "classification"}],
                                                  "teacher_max_length": 16, "batch_size": 64, "sample_size": 500})
        command = curate_cli("filter", "--config", str(config), "--output", "out", "--no-progress")
        embed = max_rss_mb(command + ["--stop-after", "embed"], run)  # teacher and one shard at a time
        rest = max_rss_mb(command, run)  # samples and output shards, from the memory-mapped vectors
        report = json.loads((run / "out" / "report.json").read_text())["sources"]["synonyms"]
        peaks[n] = (embed, rest)
        print(f"{n} pairs, {report['samples']} samples: peak RSS embed {embed:.0f} MB, filter + write {rest:.0f} MB, kept {report['kept_fraction']:.1%}")
    vectors_mb = (large - small) * 384 * 2 * 2 / 2**20  # what holding every fp16 query and document vector at once would add
    print(f"growth from {small:,} to {large:,} pairs: embed {peaks[large][0] - peaks[small][0]:+.0f} MB, filter + write "
          f"{peaks[large][1] - peaks[small][1]:+.0f} MB (all vectors in memory would add {vectors_mb:.0f} MB)")
    assert peaks[large][1] - peaks[small][1] < vectors_mb / 2, peaks
    assert peaks[large][0] - peaks[small][0] < 2 * vectors_mb, peaks


def supervised_mirror(root: Path) -> Path:
    "Local copies of nomic-ai/nomic-embed-supervised-data and the BEIR corpora in their published layouts (hub_layouts.py)."
    from hub_layouts import beir, supervised
    beir(root, supervised(root, rows_per_split=24, unmined={"fever_hn_mine": 4}))
    return root


def test_check_reads_the_published_stage3_columns(tmp_path, monkeypatch):
    """Defect 2 before/after: the published rows carry `negative` (a list); the finetune config maps it and all ten splits
    and four corpora pass; the old bucket mapping (`pos`/`neg`) fails on the MEDI sets, and reading the retrieval sets
    without the mapping fails instead of silently dropping their 10 published negatives."""
    import yaml
    monkeypatch.setenv("NOMIC_EMBED_HUB_MIRROR", str(supervised_mirror(tmp_path / "hub")))
    check = lambda config: subprocess.run(curate_cli("check", "--config", str(config)), cwd=ROOT, env={**ENV, "NOMIC_EMBED_HUB_MIRROR": str(tmp_path / "hub")},
                                          capture_output=True, text=True)
    after = check(ROOT / "configs" / "curate_finetune.yaml")
    assert after.returncode == 0, after.stdout + after.stderr
    assert after.stdout.count("ok    pairs") == 10 and after.stdout.count("ok    corpus") == 4
    assert "msmarco" in after.stdout and "negatives in the first rows: 10/10/10" in after.stdout
    config = yaml.safe_load((ROOT / "configs" / "curate_finetune.yaml").read_text())
    for source in config["sources"]:  # the old configuration: retrieval sets unmapped, MEDI sets on pos/neg
        source["columns"] = {"document": "pos", "negatives": "neg"} if source["name"].startswith("medi") else {}
    config.pop("defaults")
    before = check(write_yaml(tmp_path / "before.yaml", config))
    assert before.returncode == 2
    failed = {line.split()[2]: line for line in before.stdout.splitlines() if line.startswith("FAIL")}
    assert {"medi_wiki", "medi_stackexchange", "medi_flickr", "medi_supernli"} <= set(failed) and "no column 'pos'" in failed["medi_wiki"]
    assert "add columns: {negatives: negative} to keep them" in failed["msmarco"]
    print(after.stdout, before.stdout, sep="\n")


def test_one_split_is_read_without_touching_the_others(tmp_path, monkeypatch):
    "Loading a split lists and reads only its own files: another split's files, made unreadable, are never opened."
    from hub_layouts import unsupervised
    from nomic_embed.corpus import hub_data_files
    from nomic_embed.pairs import PairSource
    repo = unsupervised(tmp_path / "hub", rows_per_split=24)
    monkeypatch.setenv("NOMIC_EMBED_HUB_MIRROR", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    for broken in (repo / "data").glob("paq-*.parquet"):
        broken.write_bytes(b"not a parquet file")
    files = hub_data_files("nomic-ai/nomic-embed-unsupervised-data", split="gooaq")
    assert [Path(f).name for f in files] == ["gooaq-00000-of-00002.parquet", "gooaq-00001-of-00002.parquet"]
    rows = PairSource("gooaq", path="nomic-ai/nomic-embed-unsupervised-data", split="gooaq").load()
    assert len(rows) == 24 and set(rows.column_names) == {"query", "document", "dataset", "shard"} and set(rows["dataset"]) == {"gooaq"}
    with pytest.raises(Exception):  # the broken split itself does fail
        PairSource("paq", path="nomic-ai/nomic-embed-unsupervised-data", split="paq").load()


def test_positive_aware_mining_skips_candidates_close_to_the_positive(tmp_path):
    """`positive_aware_ratio`: every mined negative scores below ratio × the row's positive (the teacher's own vectors),
    while plain mining of the same rows takes some above it; the report counts what was skipped."""
    import pyarrow.parquet as pq
    import yaml
    from nomic_embed.curate import load_table
    import pyarrow as pa
    from nomic_embed.pairs import offline_pairs
    ratio = 0.95  # NV-Retriever's TopK-PercPos
    rows = offline_pairs(["wikipedia_sections"])["wikipedia_sections"][:SHARDS * ROWS]  # clean pairs: section heading → body
    (tmp_path / "wiki").mkdir()
    for k in range(SHARDS):
        pq.write_table(pa.Table.from_pylist(rows[k * ROWS:(k + 1) * ROWS]), tmp_path / "wiki" / f"part-{k}.parquet")
    source = {"name": "wiki", "data_files": str(tmp_path / "wiki" / "*.parquet"), "query_prefix": "search_query", "negatives": "mined"}
    outputs = {}
    for name, extra in (("plain", {}), ("aware", {"positive_aware_ratio": ratio})):
        config = write_yaml(tmp_path / f"{name}.yaml", {**SETTINGS, "sources": [source], **extra})
        done = subprocess.run(curate_cli("mine", "--config", str(config), "--output", name), cwd=tmp_path, env=ENV, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[name] = tmp_path / name

    def scores(output: Path) -> list[tuple[float, list[float]]]:
        "Per row: the teacher's cosine of the positive and of each written negative, from the run's own vectors."
        texts, vectors = [], []
        for k in range(SHARDS):
            texts += load_table(output / "work" / "wiki" / f"{k:05d}.texts.arrow").column("document").to_pylist()
            vectors.append(np.load(output / "work" / "wiki" / f"{k:05d}.document.npy").astype(np.float32))
        index, vectors = {t: i for i, t in enumerate(texts)}, np.concatenate(vectors)
        rows = []
        for k in range(SHARDS):
            queries = np.load(output / "work" / "wiki" / f"{k:05d}.query.npy").astype(np.float32)
            for q, row in zip(queries, pq.read_table(output / "wiki" / f"{k:05d}.parquet").to_pylist()):
                rows.append((float(q @ vectors[index[row["document"]]]), [float(q @ vectors[index[n]]) for n in row["negatives"]]))
        return rows

    plain, aware = scores(outputs["plain"]), scores(outputs["aware"])
    too_close = sum(s >= ratio * p for p, negatives in plain for s in negatives)
    assert too_close > 0, "plain mining took no negative near its positive: the test data cannot show the option"
    assert all(s < ratio * p for p, negatives in aware for s in negatives)
    report = json.loads((outputs["aware"] / "report.json").read_text())["sources"]["wiki"]
    assert report["short"] == sum(len(negatives) < SETTINGS["negatives_pool"] for _, negatives in aware) < len(aware) // 2
    assert report["positive_aware_skipped"] >= too_close
    assert json.loads((outputs["plain"] / "report.json").read_text())["sources"]["wiki"]["positive_aware_skipped"] == 0
    print(f"ratio {ratio}: plain mining took {too_close} negatives scored >= {ratio} x the positive; "
          f"positive-aware mining skipped {report['positive_aware_skipped']}")
