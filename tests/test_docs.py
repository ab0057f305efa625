"""The docs preview renders the RoPE chapter: title, typeset equations and plots, checked in headless Chromium."""
import io
import shutil
import subprocess
import sys

import pytest

BROWSERS = ("chromium-headless-shell", "chromium")
browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(browser is None, reason="no headless Chromium (apt-get install chromium-headless-shell)")


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


def test_rope_page_has_title_equations_and_plots(rope_page):
    dom = chromium("--dump-dom", rope_page.as_uri()).stdout  # the page after MathJax has typeset it
    assert "<h1" in dom and "RoPE and context extension" in dom
    assert dom.count('class="MathJax') >= 10, "equations were not typeset"
    assert "Math Processing Error" not in dom
    assert dom.count("data:image/png;base64") >= 2, "the chapter's plots are missing"
    assert "dynamic_ntk_base" in dom  # the API section rendered by show_doc


def test_rope_page_screenshot_is_not_blank(rope_page, tmp_path):
    from PIL import Image
    shot = tmp_path / "rope.png"
    chromium("--window-size=1200,5000", f"--screenshot={shot}", rope_page.as_uri())
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("L")
    assert image.size == (1200, 5000)
    histogram = image.histogram()
    assert max(histogram) < 0.97 * sum(histogram), "the screenshot is (nearly) one colour"
