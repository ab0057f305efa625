"""The docs as a reader meets them: every chapter's stored outputs are clean (no warnings, errors or machine paths);
the preview renders a chapter with its title, typeset equations, plots and the code of the functions that implement the
paper, and its links stay inside the preview (checked in headless Chromium)."""
import html
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from run_notebooks import output_problems  # noqa: E402  the check run_notebooks reports with

BROWSERS = ("chromium-headless-shell", "chromium")
browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
needs_browser = pytest.mark.skipif(browser is None, reason="no headless Chromium (apt-get install chromium-headless-shell)")


@pytest.mark.parametrize("notebook", sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb")))
def test_stored_outputs_show_no_warnings_errors_or_machine_paths(notebook):
    from execnb.nbio import read_nb
    problems = output_problems(read_nb(ROOT / "nbs" / notebook))
    assert not problems, f"{notebook}: refresh with tools/run_notebooks.py after fixing: " + "; ".join(problems)


def chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--allow-file-access-from-files", "--virtual-time-budget=20000"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def rope_page(tmp_path_factory, request):
    root = request.config.rootpath
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, str(root / "tools" / "preview_docs.py"), str(root / "nbs" / "00_rope.ipynb"), "--out", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return out / "rope.html"


def page_text(page: Path) -> str:
    "The visible text of a rendered page (tags removed, entities decoded)."
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


def test_rope_page_shows_the_code_and_links_only_to_itself(rope_page):
    text = page_text(rope_page)
    for function in ("def inv_frequencies", "def dynamic_ntk_base", "def apply_rope", "class RotaryEmbedding"):
        assert function in text, f"the page does not show the code of {function}"
    assert "Traceback" not in text and not re.search(r"(/work/|/tmp/|/home/|/root/)", text)
    links = re.findall(r'href="([^"]+)"', rope_page.read_text(encoding="utf-8"))
    outside = [link for link in links if link.startswith("http") and "github.com" in link or "github.io" in link]
    assert not outside, f"links out of the preview: {outside[:3]}"
    sources = [link for link in links if link.startswith("source/")]
    assert sources and all((rope_page.parent / link.split("#")[0]).exists() for link in sources)


@needs_browser
def test_rope_page_has_title_equations_and_plots(rope_page):
    dom = chromium("--dump-dom", rope_page.as_uri()).stdout  # the page after MathJax has typeset it
    assert "<h1" in dom and "RoPE and context extension" in dom
    assert dom.count('class="MathJax') >= 10, "equations were not typeset"
    assert "Math Processing Error" not in dom
    assert dom.count("data:image/png;base64") >= 2, "the chapter's plots are missing"
    assert "dynamic_ntk_base" in dom  # the API section rendered by show_doc


@needs_browser
def test_rope_page_screenshot_is_not_blank(rope_page, tmp_path):
    from PIL import Image
    shot = tmp_path / "rope.png"
    chromium("--window-size=1200,5000", f"--screenshot={shot}", rope_page.as_uri())
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("L")
    assert image.size == (1200, 5000)
    histogram = image.histogram()
    assert max(histogram) < 0.97 * sum(histogram), "the screenshot is (nearly) one colour"


SHOWN = {  # the cells that implement the paper: exported and shown on their page (`#| exports`)
    "00_rope": ["inv_frequencies", "dynamic_ntk_base", "apply_rope", "RotaryEmbedding"],
    "01_model": ["NomicBertAttention", "NomicBertMLP", "NomicBertBlock", "varlen_attention", "mean_pool"],
    "03_mlm": ["mask_tokens"],
    "04_contrastive": ["cosine_logits", "gather_with_grad", "info_nce_loss", "matryoshka_info_nce_loss"],
    "05_gradcache": ["embed_chunks", "gradcache_step"],
    "06_pairs": ["with_prefix", "OneSourceBatchSampler"],
    "07_filter": ["top_k_neighbours", "consistency_filter"],
    "08_negatives": ["mine_hard_negatives", "random_negatives"],
    "09a_train": ["MLMStage", "ContrastiveStage"],
    "10_embed": ["Embedder", "quantize_embeddings"],
}


@pytest.mark.parametrize("notebook", sorted(SHOWN))
def test_the_paper_s_code_is_shown_on_its_page(notebook):
    cells = json.loads((ROOT / "nbs" / f"{notebook}.ipynb").read_text())["cells"]
    shown = {name for cell in cells if "".join(cell["source"]).startswith("#| exports\n")
             for name in re.findall(r"^(?:def|class) (\w+)", "".join(cell["source"]), re.M)}
    missing = [name for name in SHOWN[notebook] if name not in shown]
    assert not missing, f"{notebook}: mark the cells defining {missing} `#| exports` so the page shows their code"
