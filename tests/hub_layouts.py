"""Local copies of the public hub datasets the full-scale recipe reads, laid out exactly as published.

Each writer builds one repository under a root directory, at the path `nomic_embed.corpus.hub_repo_root` reads when
`$NOMIC_EMBED_HUB_MIRROR` points at that root: `ROOT/owner/name` (a revision `r` at `ROOT/owner/name@<r URL-quoted>`).
The files, their names, the card's `configs:` block, the column names and the Arrow types are those of the public
repository named in the writer's docstring (checked against its dataset card and file listing); the rows are real text
that installs offline (REFERENCE.md §7): gensim's Wikipedia sample and news corpora, and the Python standard library's
docstrings, source and pydoc topics. Nothing here downloads anything.

    root = write_hub_mirror(tmp_path / "hub")            # every repository
    monkeypatch.setenv("NOMIC_EMBED_HUB_MIRROR", str(root))
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

# The 29 splits of nomic-ai/nomic-embed-unsupervised-data and the 10 of nomic-ai/nomic-embed-supervised-data, as their
# cards list them (the full-scale configs name the same splits).
UNSUPERVISED_SPLITS = (
    "reddit_title_body", "amazon_reviews", "paq", "s2orc_citation_titles", "s2orc_title_abstract", "s2orc_abstract_citation",
    "s2orc_abstract_body", "wikianswers", "wikipedia", "gooaq", "codesearch", "yahoo_title_answer", "agnews", "amazonqa",
    "yahoo_qa", "yahoo_title_question", "ccnews", "npr", "eli5", "cnn", "stackexchange_duplicate_questions",
    "stackexchange_title_body", "stackexchange_body_body", "sentence_compression", "wikihow", "altlex", "quora",
    "simplewiki", "squad")
SUPERVISED_SPLITS = {  # split -> (offline pair source of its rows, mined?): retrieval sets carry mined negatives
    "msmarco_distillation_simlm_rescored_reranked_min15": ("python_docstrings", True),
    "nq_cocondensor_hn_mine_reranked_min15": ("wikipedia_sections", True),
    "nli_simcse_50negs_fixed": ("pydoc_topics", False),
    "reddit_triples": ("python_code", False),
    "medi_sts_wiki_rephrasal": ("wikipedia_title_lead", False),
    "medi_sts_stackexchange_dupe": ("python_docstrings", False),
    "medi_sts_flickr_sampled": ("python_code", False),
    "medi_supernli_sampled": ("wikipedia_sections", False),
    "hotpotqa_hn_mine_shuffled": ("wikipedia_title_lead", True),
    "fever_hn_mine": ("python_code", True),
}
BEIR_CORPORA = {"mteb/msmarco": "msmarco_distillation_simlm_rescored_reranked_min15", "mteb/nq": "nq_cocondensor_hn_mine_reranked_min15",
                "mteb/hotpotqa": "hotpotqa_hn_mine_shuffled", "mteb/fever": "fever_hn_mine"}
PUBLISHED_NEGATIVES = 10  # negatives per row in the published retrieval splits
PAIR_SOURCES = ("wikipedia_sections", "wikipedia_title_lead", "python_docstrings", "python_code", "pydoc_topics")  # pip/stdlib only


def _card(repo_dir: Path, mirrors: str, configs: list[dict], features: dict | None = None) -> None:
    "A README.md whose front matter holds the published `dataset_info` features and `configs:` block."
    front = {}
    if features:
        front["dataset_info"] = {"features": [{"name": name, **dtype} for name, dtype in features.items()]}
    front["configs"] = configs
    repo_dir.mkdir(parents=True, exist_ok=True)
    (repo_dir / "README.md").write_text(f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\nA local copy laid out as "
                                        f"https://huggingface.co/datasets/{mirrors} (files, card configs, columns and types); "
                                        "the rows are offline real text.\n", encoding="utf-8")


def _parquet(rows: list[dict], schema: pa.Schema, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _split_files(rows: list[dict], schema: pa.Schema, directory: Path, split: str, parts: int) -> None:
    "`rows` as `push_to_hub` writes a split: DIRECTORY/SPLIT-NNNNN-of-NNNNN.parquet."
    for part in range(parts):
        _parquet(rows[part::parts], schema, directory / f"{split}-{part:05d}-of-{parts:05d}.parquet")


def _jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def _pairs(name: str) -> list[dict]:
    "The rows of an offline pair source whose query and document are both non-blank."
    from nomic_embed.pairs import offline_pairs
    return [r for r in offline_pairs([name])[name] if r["query"].strip() and r["document"].strip()]


STRING, STRINGS = {"dtype": "string"}, {"sequence": "string"}


def wikipedia(root: Path, articles: int = 106) -> Path:
    """`wikimedia/wikipedia`, config `20231101.en`: `20231101.en/train-NNNNN-of-NNNNN.parquet`, columns `id`, `url`, `title`,
    `text` (strings), the card's `configs:` listing one config per dump. Rows: gensim's Wikipedia sample."""
    from nomic_embed.offline import wikipedia_articles
    repo = root / "wikimedia" / "wikipedia"
    _card(repo, "wikimedia/wikipedia", [{"config_name": "20231101.en", "data_files": [{"split": "train", "path": "20231101.en/train-*"}]}],
          {"id": STRING, "url": STRING, "title": STRING, "text": STRING})
    rows = [{"id": str(12 + i), "url": f"https://en.wikipedia.org/wiki/{a['title'].replace(' ', '_')}", "title": a["title"],
             "text": a["text"]} for i, a in enumerate(wikipedia_articles()[:articles])]
    schema = pa.schema([(name, pa.string()) for name in ("id", "url", "title", "text")])
    _split_files(rows, schema, repo / "20231101.en", "train", 2)
    return repo


def bookcorpus(root: Path) -> Path:
    """`bookcorpus/bookcorpus` as the hub's parquet conversion stores it (branch `refs/convert/parquet`): config directory
    `plain_text/train/NNNN.parquet`, one sentence per row in a `text` column, no book id. The main branch holds a loading
    script that `datasets` >= 4 refuses, so nothing is written there. Rows: sentences of gensim's news corpora."""
    from gensim.test.utils import datapath
    repo = root / "bookcorpus" / "bookcorpus@refs%2Fconvert%2Fparquet"
    text = " ".join(Path(datapath(name)).read_text(encoding="latin-1") for name in ("lee_background.cor", "lee.cor"))
    sentences = [s.strip().lower() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 3]
    _parquet([{"text": s} for s in sentences[: len(sentences) // 2]], pa.schema([("text", pa.string())]), repo / "plain_text" / "train" / "0000.parquet")
    _parquet([{"text": s} for s in sentences[len(sentences) // 2:]], pa.schema([("text", pa.string())]), repo / "plain_text" / "train" / "0001.parquet")
    return repo


def pretokenized(root: Path, chunk_length: int = 2048) -> Path:
    """`nomic-ai/nomic-bert-2048-pretraining-data`: `data/train-NNNNN-of-NNNNN-<hash>.parquet` (a `push_to_hub` of the
    reference's pretokenize script), columns `input_ids` (int32), `token_type_ids`, `attention_mask`,
    `special_tokens_mask` (int8), each a list of `chunk_length` (2,048) tokens: documents tokenised with bert-base-uncased
    as `[CLS] … [SEP]`, concatenated and cut. Rows: gensim's Wikipedia sample, packed here with the corpus chapter's code."""
    import numpy as np
    from nomic_embed.corpus import load_tokenizer, pack_token_stream
    from nomic_embed.offline import wikipedia_articles
    tokenizer = load_tokenizer()
    ids = tokenizer([a["text"] for a in wikipedia_articles()], verbose=False)["input_ids"]
    chunks = [chunk.tolist() for chunk in pack_token_stream(ids, chunk_length)]
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id}
    rows = [{"input_ids": c, "token_type_ids": [0] * chunk_length, "attention_mask": [1] * chunk_length,
             "special_tokens_mask": [int(t in special) for t in c]} for c in chunks]
    schema = pa.schema([("input_ids", pa.list_(pa.int32()))] + [(n, pa.list_(pa.int8())) for n in ("token_type_ids", "attention_mask", "special_tokens_mask")])
    repo = root / "nomic-ai" / "nomic-bert-2048-pretraining-data"
    _card(repo, "nomic-ai/nomic-bert-2048-pretraining-data", [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
          {"input_ids": {"sequence": "int32"}, **{n: {"sequence": "int8"} for n in ("token_type_ids", "attention_mask", "special_tokens_mask")}})
    for part in range(2):
        _parquet(rows[part::2], schema, repo / "data" / f"train-{part:05d}-of-00002-{np.random.default_rng(part).bytes(8).hex()}.parquet")
    return repo


def unsupervised(root: Path, rows_per_split: int = 40) -> Path:
    """`nomic-ai/nomic-embed-unsupervised-data`: 29 splits, `data/SPLIT-NNNNN-of-NNNNN.parquet`, columns `query`, `document`,
    `dataset` (strings) and `shard` (int64), the card's `configs:` listing each split's files. Rows: the offline pair
    sources (pip and standard library only), a different slice of one of them per split."""
    repo = root / "nomic-ai" / "nomic-embed-unsupervised-data"
    _card(repo, "nomic-ai/nomic-embed-unsupervised-data",
          [{"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*"} for s in UNSUPERVISED_SPLITS]}],
          {"query": STRING, "document": STRING, "dataset": STRING, "shard": {"dtype": "int64"}})
    schema = pa.schema([("query", pa.string()), ("document", pa.string()), ("dataset", pa.string()), ("shard", pa.int64())])
    pools = {name: _pairs(name) for name in PAIR_SOURCES}
    for number, split in enumerate(UNSUPERVISED_SPLITS):
        pool = pools[PAIR_SOURCES[number % len(PAIR_SOURCES)]]
        start = (number // len(PAIR_SOURCES)) * rows_per_split % max(len(pool) - rows_per_split, 1)
        rows = [{"query": r["query"], "document": r["document"], "dataset": split, "shard": i // 16}
                for i, r in enumerate(pool[start:start + rows_per_split])]
        _split_files(rows, schema, repo / "data", split, 2)
    return repo


def supervised(root: Path, rows_per_split: int = 40, unmined: dict[str, int] | None = None) -> Path:
    """`nomic-ai/nomic-embed-supervised-data`: 10 splits, `data/SPLIT-NNNNN-of-NNNNN.parquet`, columns `query`, `document`,
    `negative` (a list of strings) and `dataset` in every split, the card's `configs:` listing each split's files. The
    retrieval splits carry 10 negatives per row (other documents of the same source, most similar first by shared
    words); the others carry lists too, as published. `unmined` {split: k} leaves every k-th row of a split without
    negatives, so `nomic_embed_curate mine` has rows to mine ("if not already mined")."""
    repo = root / "nomic-ai" / "nomic-embed-supervised-data"
    _card(repo, "nomic-ai/nomic-embed-supervised-data",
          [{"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*"} for s in SUPERVISED_SPLITS]}],
          {"query": STRING, "document": STRING, "negative": STRINGS, "dataset": STRING})
    schema = pa.schema([("query", pa.string()), ("document", pa.string()), ("negative", pa.list_(pa.string())), ("dataset", pa.string())])
    for number, (split, (source, _)) in enumerate(SUPERVISED_SPLITS.items()):
        pool = _pairs(source)
        start = number * 7 % max(len(pool) - rows_per_split, 1)
        rows = pool[start:start + rows_per_split]
        every = (unmined or {}).get(split)
        published = []
        for i, row in enumerate(rows):
            words = set(row["query"].lower().split())
            others = sorted((o for o in rows if o["document"] != row["document"]),
                            key=lambda o: -len(words & set(o["document"].lower().split())))
            negatives = [] if every and i % every == 0 else [o["document"] for o in others[:PUBLISHED_NEGATIVES]]
            published.append({"query": row["query"], "document": row["document"], "negative": negatives, "dataset": split})
        _split_files(published, schema, repo / "data", split, 2)
    return repo


def beir(root: Path, supervised_repo: Path) -> list[Path]:
    """The BEIR copies the mining corpora name (`mteb/msmarco`, `mteb/nq`, `mteb/hotpotqa`, `mteb/fever`): `corpus.jsonl`
    (`_id`, `title`, `text`), `queries.jsonl` (`_id`, `text`) and `qrels/test.jsonl` (`query-id`, `corpus-id`, `score`),
    the card's `configs:` naming `corpus`, `queries` and `default` (the qrels). The corpus holds every document of its
    retrieval split (title empty, so `title text` reads as the pair's document) and other texts of the same kind."""
    written = []
    for repo_id, split in BEIR_CORPORA.items():
        repo = root / repo_id
        _card(repo, repo_id, [{"config_name": "default", "data_files": [{"split": "test", "path": "qrels/test.jsonl"}]},
                              {"config_name": "corpus", "data_files": [{"split": "corpus", "path": "corpus.jsonl"}]},
                              {"config_name": "queries", "data_files": [{"split": "queries", "path": "queries.jsonl"}]}])
        rows = pa.concat_tables([pq.read_table(f) for f in sorted((supervised_repo / "data").glob(f"{split}-*.parquet"))]).to_pylist()
        others = [r["document"] for r in _pairs(SUPERVISED_SPLITS[split][0])[-60:]]  # texts no pair of the split holds
        documents = list(dict.fromkeys([r["document"] for r in rows] + others))
        _jsonl([{"_id": f"d{i}", "title": "", "text": text} for i, text in enumerate(documents)], repo / "corpus.jsonl")
        _jsonl([{"_id": f"q{i}", "text": r["query"]} for i, r in enumerate(rows)], repo / "queries.jsonl")
        ids = {text: f"d{i}" for i, text in enumerate(documents)}
        _jsonl([{"query-id": f"q{i}", "corpus-id": ids[r["document"]], "score": 1} for i, r in enumerate(rows)], repo / "qrels" / "test.jsonl")
        written.append(repo)
    return written


def loco(root: Path, subset: str = "qasper_abstract") -> list[Path]:
    """`hazyresearch/LoCoV1-Queries` and `hazyresearch/LoCoV1-Documents`: JSON Lines per subset, `queries/SUBSET_test.jsonl`
    (`qid`, `query`, `answer_pids`, `dataset`) and `documents/SUBSET_test.jsonl` (`pid`, `passage`, `dataset`), split
    `test`. Rows: a Wikipedia article's lead as the query, its whole text as the document (one subset)."""
    from nomic_embed.offline import wikipedia_articles
    articles = wikipedia_articles()[:40]
    queries_repo, documents_repo = root / "hazyresearch" / "LoCoV1-Queries", root / "hazyresearch" / "LoCoV1-Documents"
    _card(queries_repo, "hazyresearch/LoCoV1-Queries", [{"config_name": "default", "data_files": [{"split": "test", "path": "queries/*_test.jsonl"}]}])
    _card(documents_repo, "hazyresearch/LoCoV1-Documents", [{"config_name": "default", "data_files": [{"split": "test", "path": "documents/*_test.jsonl"}]}])
    _jsonl([{"qid": f"{subset}_q{i}", "query": a["text"].split("\n")[0], "answer_pids": [f"{subset}_d{i}"], "dataset": subset}
            for i, a in enumerate(articles)], queries_repo / "queries" / f"{subset}_test.jsonl")
    _jsonl([{"pid": f"{subset}_d{i}", "passage": a["text"], "dataset": subset} for i, a in enumerate(articles)],
           documents_repo / "documents" / f"{subset}_test.jsonl")
    return [queries_repo, documents_repo]


def write_hub_mirror(root: Path, rows_per_split: int = 40, chunk_length: int = 2048, unmined: dict[str, int] | None = None) -> Path:
    "Every repository above under `root` (returned): set `$NOMIC_EMBED_HUB_MIRROR` to it."
    root = Path(root)
    wikipedia(root)
    bookcorpus(root)
    pretokenized(root, chunk_length)
    unsupervised(root, rows_per_split)
    beir(root, supervised(root, rows_per_split, unmined))
    loco(root)
    return root
