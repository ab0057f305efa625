"""The install works as a user meets it: console script, plain imports, README in step with the index notebook."""
import subprocess
import sys

from conftest import bin_path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=300)


def test_demo_prints_the_scaled_bases():
    result = run(bin_path("nomic_embed_demo"), "--lengths", "2048", "4096", "8192")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()}
    assert rows["2048"][-1] == "1000.0"
    assert rows["4096"][-1] == "3108.2"  # eq. 5: 1000 * 3**(64/62)
    assert rows["8192"][-1] == "7453.5"  # eq. 5: 1000 * 7**(64/62)


def test_demo_rejects_bad_lengths():
    result = run(bin_path("nomic_embed_demo"), "--lengths", "0")
    assert result.returncode == 2
    assert "positive number of tokens" in result.stderr


def test_rope_imports_in_a_plain_process():
    code = ("from nomic_embed.rope import RotaryEmbedding, apply_rope, dynamic_ntk_base, ntk_base, interpolation_scale; "
            "import torch; cos, sin = RotaryEmbedding(64, scheme='dynamic_ntk')(torch.arange(4096)); "
            "print(tuple(cos.shape), round(dynamic_ntk_base(1000, 64, 4096), 1))")
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(4096,", "64)", "3108.2"]


def test_library_has_no_notebook_tooling_dependency():
    code = ("import sys, nomic_embed.rope; "
            "bad = [m for m in ('nbdev', 'fastcore', 'execnb') if m in sys.modules]; print(bad)")
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_readme_is_generated_from_the_index_notebook(root):
    result = run(sys.executable, str(root / "tools" / "make_readme.py"), "--check")
    assert result.returncode == 0, result.stdout + result.stderr
