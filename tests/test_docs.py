"""The docs as a reader meets them.

- Every chapter's stored outputs are clean (no warnings, errors or machine paths).
- The site is a book: `nbs/sidebar.yml` lists every notebook once, by part, and Quarto's config turns on the sidebar,
  previous/next links and search; the GitHub workflows test on push and publish the site.
- The offline preview (tools/preview_docs.py, rendered once for the whole site) carries the same sidebar and
  previous/next links, its links resolve, every Part I page shows the code of its key definitions, and no page has
  clipped code, a traceback, a warning box or an absolute machine path (the layout checked in headless Chromium).
"""
import configparser
import html
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
sys.path.insert(0, str(ROOT / "tools"))
from preview_docs import html_name, sidebar_entries  # noqa: E402  the preview's own reading of the sidebar
from run_notebooks import output_problems  # noqa: E402  the check run_notebooks reports with

BROWSERS = ("chromium-headless-shell", "chromium")
browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
needs_browser = pytest.mark.skipif(browser is None, reason="no headless Chromium (apt-get install chromium-headless-shell)")
WIDTH = 100  # the most columns a shown code line may have: wider lines are clipped or scroll on the page

# Notebooks announced by the chapters' authors and listed in the sidebar before they exist.
PENDING_NOTEBOOKS: dict[str, str] = {}
KEY_DEFINITIONS = {  # the cells that implement the paper: exported and shown on their page (`#| exports`)
    "00_rope": ["inv_frequencies", "rope_cos_sin", "apply_rope", "interpolation_scale", "ntk_base", "dynamic_ntk_base",
                "RotaryEmbedding"],
    "01_model": ["NomicBertConfig", "NomicBertEmbeddings", "NomicBertAttention", "NomicBertMLP", "NomicBertBlock",
                 "varlen_attention", "NomicBertModel", "mean_pool", "NomicBertForPreTraining"],
    "02_corpus": ["load_tokenizer", "hub_data_files", "load_hub_split", "data_file_problem", "check_source",
                  "text_dataset", "tokenize_documents", "pack_token_stream", "CorpusConfig", "PackedCorpus",
                  "write_packed", "packed_corpus"],
    "03_mlm": ["MaskingConfig", "mask_tokens", "MLMBatches"],
    "04_contrastive": ["cosine_logits", "gather_with_grad", "info_nce_loss", "matryoshka_info_nce_loss"],
    "05_gradcache": ["embed_chunks", "gradcache_step"],
    "06_pairs": ["with_prefix", "split_pairs", "PairSource", "load_pair_config", "PairDataset",
                 "one_source_plan", "OneSourceBatchSampler", "MixedBatchSampler", "PairCollator"],
    "07_filter": ["top_k_neighbours", "consistency_filter"],
    "08_negatives": ["mine_hard_negatives", "random_negatives"],
    "09_trainer": ["TrainConfig", "Stage", "build_optimizer", "build_scheduler", "build_backprop",
                   "accumulate_gradients", "gradient_norm", "apply_update", "save_checkpoint", "NonFiniteGuard",
                   "TrainingSetup", "TrainingStep", "Trainer"],
    "09a_train": ["MLMStage", "PairDataConfig", "ContrastiveConfig", "with_built_negatives", "retrieval_metrics",
                  "HeldOutRetrieval", "ContrastiveBatches", "ContrastiveStage", "ContrastivePretrainStage",
                  "ContrastiveFinetuneStage", "plan_run"],
    "10_embed": ["Embedder", "add_prefix", "save_sentence_transformers", "quantize_embeddings", "MTEBEncoder"],
    "11_evaluate": ["score_task", "evaluate_offline"],
    "12_reproduce": ["Budget", "run_chain"],
}
ENTRIES = sidebar_entries(NBS)  # (part, notebook, text)
PART_ONE = [Path(name).stem for part, name, _ in ENTRIES if part.split(" — ")[0] == "Part I"]
PAGES = [name for _, name, _ in ENTRIES if (NBS / name).exists()]


@pytest.mark.parametrize("notebook", sorted(p.name for p in NBS.glob("*.ipynb")))
def test_stored_outputs_show_no_warnings_errors_or_machine_paths(notebook):
    from execnb.nbio import read_nb
    problems = output_problems(read_nb(NBS / notebook))
    assert not problems, f"{notebook}: refresh with tools/run_notebooks.py after fixing: " + "; ".join(problems)


# --- the book's structure, as Quarto builds it --------------------------------------------------------------------

def test_every_notebook_is_in_the_sidebar_once_and_every_entry_exists():
    listed = [name for _, name, _ in ENTRIES]
    twice = sorted({name for name in listed if listed.count(name) > 1})
    assert not twice, f"listed more than once in nbs/sidebar.yml: {twice}"
    unlisted = sorted(p.name for p in NBS.glob("*.ipynb") if p.name not in listed)
    assert not unlisted, f"add {unlisted} to nbs/sidebar.yml under its part (Part I, the paper; Part II, appendices)"
    absent = [name for name in listed if not (NBS / name).exists() and name not in PENDING_NOTEBOOKS]
    assert not absent, f"nbs/sidebar.yml lists notebooks that do not exist: {absent}"
    parts = [part for part, _, _ in ENTRIES if part]
    assert {p.split(" — ")[0] for p in parts} == {"Part I", "Part II"}, parts
    assert listed[0] == "index.ipynb" and PART_ONE[0] == "00_rope", "the book opens with the overview, then RoPE"


def test_quarto_builds_the_sidebar_previous_next_and_search():
    settings = configparser.ConfigParser()
    settings.read(ROOT / "settings.ini")
    assert settings["DEFAULT"].getboolean("custom_sidebar"), "custom_sidebar = True, or nbdev_docs overwrites sidebar.yml"
    quarto = yaml.safe_load((NBS / "_quarto.yml").read_text())
    assert (ROOT / "_quarto.yml").resolve() == (NBS / "_quarto.yml").resolve(), "_quarto.yml is nbs/_quarto.yml"
    assert "sidebar.yml" in quarto["metadata-files"] and "nbdev.yml" in quarto["metadata-files"]
    assert quarto["website"]["page-navigation"] is True
    assert quarto["website"]["navbar"]["search"] is True


def test_github_workflows_test_on_push_and_publish_the_site():
    workflows = ROOT / ".github" / "workflows"
    test = yaml.safe_load((workflows / "test.yaml").read_text())
    deploy = yaml.safe_load((workflows / "deploy.yaml").read_text())
    assert "push" in test[True] and "pull_request" in test[True]  # YAML reads the key `on` as True
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/run" in json.dumps(test["jobs"]) and "bash tools/setup.sh" in ci and "bash tools/test.sh" in ci
    cpu_index = "https://download.pytorch.org/whl/cpu"  # where the torch pin resolves to the CPU build
    assert test["jobs"]["test"]["env"]["PIP_EXTRA_INDEX_URL"] == deploy["jobs"]["deploy"]["env"]["PIP_EXTRA_INDEX_URL"] == cpu_index
    pin = re.search(r"TORCH_SPEC:-(torch==[\d.]+)", (ROOT / "tools" / "setup.sh").read_text())[1]
    steps = json.dumps(deploy["jobs"]["deploy"]["steps"])
    assert re.findall(r"torch==[\d.]+", steps) == [pin], "the docs build installs the torch tools/setup.sh pins"
    assert "quarto-dev/quarto-actions/setup" in steps and "nbdev_docs" in steps
    assert "./_docs" in steps, "publish the folder nbdev_docs writes (settings.ini doc_path)"
    assert deploy["permissions"]["contents"] == "write"


@pytest.mark.parametrize("notebook", sorted(KEY_DEFINITIONS))
def test_the_paper_s_code_is_shown_on_its_page(notebook):
    cells = json.loads((NBS / f"{notebook}.ipynb").read_text())["cells"]
    shown = {name for cell in cells if "".join(cell["source"]).startswith("#| exports\n")
             for name in re.findall(r"^(?:def|class) (\w+)", "".join(cell["source"]), re.M)}
    missing = [name for name in KEY_DEFINITIONS[notebook] if name not in shown]
    assert not missing, f"{notebook}: mark the cells defining {missing} `#| exports` so the page shows their code"


# --- the offline preview ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    "The whole preview site, rendered once (about a minute)."
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "preview_docs.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def page_text(page: Path) -> str:
    "The visible text of a rendered page (tags removed, entities decoded)."
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


def shown_code(page: Path, markdown: bool = False) -> list[str]:
    "The text of every code cell shown on the page (and, with `markdown`, of the code blocks in its prose)."
    cells = re.split(r'<div class="jp-Cell ', page.read_text(encoding="utf-8"))[1:]
    inputs = [cell.split("jp-Cell-outputWrapper")[0] for cell in cells]  # a cell's input, not its outputs
    blocks = [block for cell in inputs if markdown or "jp-CodeCell" in cell.split(">")[0]
              for block in re.findall(r"<pre[^>]*>(.*?)</pre>", cell, re.S)]
    return [html.unescape(re.sub(r"<[^>]+>", "", block)) for block in blocks]


def test_every_page_has_the_sidebar_by_part_and_previous_next(site):
    hrefs = [html_name(name) for name in PAGES]
    for i, href in enumerate(hrefs):
        page = (site / href).read_text(encoding="utf-8")
        sidebar = re.search(r'<nav class="book-sidebar".*?</nav>', page, re.S)[0]
        assert re.findall(r'<li[^>]*><a href="([^"]+)"', sidebar) == hrefs, f"{href}: the sidebar is not the book's order"
        assert f'<li class="active"><a href="{href}"' in sidebar, f"{href}: the sidebar does not mark this page"
        assert "Part I — the paper" in sidebar and "Part II — appendices" in sidebar
        pagenav = re.search(r'<nav class="book-pagenav".*?</nav>', page, re.S)[0]
        previous = re.findall(r'class="previous" href="([^"]+)"', pagenav)
        following = re.findall(r'class="next" href="([^"]+)"', pagenav)
        assert previous == hrefs[i - 1:i] if i else not previous, f"{href}: previous link {previous}"
        assert following == hrefs[i + 1:i + 2], f"{href}: next link {following}"


def test_links_stay_inside_the_preview_and_resolve(site):
    broken, outside = [], []
    announced = {html_name(name) for name in PENDING_NOTEBOOKS}
    for page in sorted(site.glob("*.html")):
        for link in re.findall(r'href="([^"]+)"', page.read_text(encoding="utf-8")):
            if re.match(r"https?://[^/]*github\.(com|io)", link):
                outside.append(f"{page.name}: {link}")
            elif not re.match(r"(https?:|mailto:|#|data:)", link) and not (site / link.split("#")[0]).exists():
                if link.split("#")[0] not in announced:  # a page announced in PENDING_NOTEBOOKS, not yet written
                    broken.append(f"{page.name}: {link}")
    assert not outside, f"links out of the preview: {outside[:5]}"
    assert not broken, f"links to pages that do not exist: {broken[:5]}"


@pytest.mark.parametrize("notebook", PART_ONE)
def test_part_one_pages_show_the_code_of_their_key_definitions(site, notebook):
    assert notebook in KEY_DEFINITIONS, f"name {notebook}'s key definitions in KEY_DEFINITIONS"
    code = "\n".join(shown_code(site / html_name(notebook)))
    missing = [name for name in KEY_DEFINITIONS[notebook] if not re.search(rf"^(?:def|class) {name}\b", code, re.M)]
    assert not missing, f"{notebook}: the page does not show the code of {missing}"


@pytest.mark.parametrize("notebook", [Path(name).stem for name in PAGES])
def test_pages_have_no_clipped_code_traceback_warning_or_machine_path(site, notebook):
    page = site / html_name(notebook)
    wide = [line for block in shown_code(page, markdown=True) for line in block.splitlines() if len(line) > WIDTH]
    assert not wide, f"{notebook}: {len(wide)} shown code lines over {WIDTH} columns, e.g. {wide[0]!r}"
    text = page_text(page)
    assert "Traceback (most recent call last)" not in text
    assert not re.search(r'<div[^>]*data-mime-type="application/vnd\.jupyter\.stderr"', page.read_text(encoding="utf-8")), \
        f"{notebook}: a stored output went to stderr (a warning box on the page)"
    paths = re.findall(r"(?<![\w.~-])/(?:work|tmp|home|root)/\S*", text)
    assert not paths, f"{notebook}: absolute machine paths on the page: {paths[:3]}"


def chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--allow-file-access-from-files",
             "--virtual-time-budget=20000"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=180)


@needs_browser
def test_rendered_code_blocks_do_not_overflow_a_laptop_screen(site, tmp_path):
    "Every page in one browser run: each in a 1280-pixel frame (MathJax left out), counting code blocks that scroll."
    for page in site.glob("*.html"):  # copies without MathJax beside the originals' styles and sources
        text = re.sub(r'<script src="[^"]*MathJax\.js[^"]*">\s*</script>', "", page.read_text(encoding="utf-8"))
        (tmp_path / page.name).write_text(text, encoding="utf-8")
    frames = "".join(f'<iframe src="{html_name(name)}" style="width:1280px;height:800px"></iframe>' for name in PAGES)
    probe = """<script>window.addEventListener('load', () => {
      const wide = {};
      for (const frame of document.querySelectorAll('iframe'))
        wide[frame.getAttribute('src')] = [...frame.contentDocument.querySelectorAll('.jp-Cell-inputArea pre')]
          .filter(pre => pre.scrollWidth > pre.clientWidth + 1).length;
      document.body.setAttribute('data-wide', JSON.stringify(wide));
    });</script>"""
    (tmp_path / "probe.html").write_text(f"<!doctype html><html><body>{frames}{probe}</body></html>", encoding="utf-8")
    dom = chromium("--window-size=1400,900", "--dump-dom", (tmp_path / "probe.html").as_uri()).stdout
    wide = json.loads(html.unescape(re.search(r'data-wide="([^"]*)"', dom)[1]))
    assert set(wide) == {html_name(name) for name in PAGES}
    checked = {Path(name).stem: wide[html_name(name)] for name in PAGES}
    overflowing = {name: n for name, n in checked.items() if n}
    assert not overflowing, f"code blocks that scroll sideways at 1280 pixels: {overflowing}"


@needs_browser
def test_rope_page_has_title_equations_and_plots(site):
    dom = chromium("--dump-dom", (site / "rope.html").as_uri()).stdout  # the page after MathJax has typeset it
    assert "<h1" in dom and "RoPE and context extension" in dom
    assert dom.count('class="MathJax') >= 10, "equations were not typeset"
    assert "Math Processing Error" not in dom
    assert dom.count("data:image/png;base64") >= 2, "the chapter's plots are missing"
    assert 'class="book-sidebar"' in dom and 'class="book-pagenav"' in dom


@needs_browser
def test_rope_page_screenshot_is_not_blank(site, tmp_path):
    from PIL import Image
    shot = tmp_path / "rope.png"
    chromium("--window-size=1280,5000", f"--screenshot={shot}", (site / "rope.html").as_uri())
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("L")
    assert image.size == (1280, 5000)
    histogram = image.histogram()
    assert max(histogram) < 0.97 * sum(histogram), "the screenshot is (nearly) one colour"
