"""The offline sources as processes see them: the same rows under any hash seed, a cache that survives a killed build
and a corrupted file, and training text that never shares a sentence with the evaluation side."""
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ENV

DIGESTS = r"""
import hashlib, json, sys
from nomic_embed import offline
texts, pairs = json.loads(sys.argv[1])
digest = lambda rows: hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()
print(json.dumps({**{"documents/" + n: digest(offline.offline_documents(n)) for n in texts},
                  **{"pairs/" + n: digest(offline.offline_pair_rows(n)) for n in pairs}}))
"""


def fresh_cache(tmp_path: Path, name: str) -> Path:
    "An empty cache directory holding only the evaluation-side hashes (built once, by this process, if need be)."
    from nomic_embed import offline
    offline.evaluation_shingle_hashes()
    cache = tmp_path / name
    (cache / "offline").mkdir(parents=True)
    for file in (offline.default_cache_dir() / "offline").glob(f"evaluation_shingles-{offline.evaluation_key()}.json"):
        shutil.copy(file, cache / "offline" / file.name)
    assert list((cache / "offline").iterdir()), "the evaluation-side hashes were not cached"
    return cache


def digests(cache: Path, texts: list[str], pairs: list[str], **env: str) -> dict[str, str]:
    result = subprocess.run([sys.executable, "-c", DIGESTS, json.dumps([texts, pairs])], capture_output=True, text=True,
                            env={**ENV, "NOMIC_EMBED_CACHE": str(cache), **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_same_rows_under_any_hash_seed(tmp_path):
    "Two fresh processes with different string-hash seeds, each building in an empty cache, give identical rows."
    texts, pairs = ["jargon"], ["wordnet_synonyms", "jargon_definitions", "pydoc_topics"]
    first = digests(fresh_cache(tmp_path, "a"), texts, pairs, PYTHONHASHSEED="1")
    second = digests(fresh_cache(tmp_path, "b"), texts, pairs, PYTHONHASHSEED="2")
    assert first == second and len(first) == 4


def test_killed_build_leaves_only_complete_files(tmp_path):
    "SIGKILL while sources are being built and written: every cache file left is complete JSON, and a rerun gives the rows."
    cache = fresh_cache(tmp_path, "killed")
    names = ["jargon_definitions", "foldoc_definitions"]
    code = DIGESTS.replace("print(", "_ = (")
    process = subprocess.Popen([sys.executable, "-c", code, json.dumps([[], names])], env={**ENV, "NOMIC_EMBED_CACHE": str(cache)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and not list((cache / "offline").glob("pairs-jargon_definitions-*.json")):
        time.sleep(0.01)  # kill once the first source is written and the second is being built
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    for file in (cache / "offline").glob("*.json"):
        json.loads(file.read_text())  # complete, or it would not be there under this name
    assert not list((cache / "offline").glob("pairs-foldoc_definitions-*.json"))
    assert digests(cache, [], names) == digests(fresh_cache(tmp_path, "clean"), [], names)


def test_corrupted_cache_file_is_rebuilt(tmp_path):
    "A cache file cut short (a disk filled up, say) is not trusted: the next process rebuilds the same rows."
    cache = fresh_cache(tmp_path, "corrupt")
    expected = digests(cache, ["jargon"], [])
    [file] = (cache / "offline").glob("documents-jargon-*.json")
    file.write_text(file.read_text()[:1000])
    assert digests(cache, ["jargon"], []) == expected
    json.loads(file.read_text())


@pytest.mark.slow
def test_every_source_is_disjoint_from_the_evaluation_side():
    "No training text shares eight words in a row with the evaluation side (hashed afresh)."
    from nomic_embed import offline
    evaluation = {h for _, text in offline.evaluation_side_texts() for h in offline.shingle_hashes(text)}
    leaks = [(name, text[:80]) for name, text in offline.training_texts() if not evaluation.isdisjoint(offline.shingle_hashes(text))]
    assert leaks == []
