"""Preview the documentation site without Quarto.

Runs nbdev's own notebook processing (the step `nbdev_docs` performs before Quarto renders: show_doc
tables, hidden cells removed, front matter from the title cell) into `_proc/`, then renders every
processed chapter to HTML with `jupyter nbconvert` into `_site_preview/`, with MathJax served from the
local `jupyter-server-mathjax` package so equations render offline. Open `_site_preview/index.html`.

Links are made local: show_doc's "source" links (built by nbdev from settings.ini's `git_url` and `branch`) point
to pages of the library's source rendered here (`source/<module>.py.html#L<line>`), and links to the published site
(`doc_host` + `doc_baseurl`) point to the pages beside them.

Where Quarto is installed, `nbdev_docs` builds the real site from the same notebooks.
Usage: python tools/preview_docs.py [nbs/00_rope.ipynb ...] [--out _site_preview]
"""
import argparse
import html as html_escape
import re
import shutil
from pathlib import Path

import nbformat
import yaml
from nbconvert import HTMLExporter
from nbconvert.preprocessors import TagRemovePreprocessor
from nbdev.config import get_config
from nbdev.processors import FilterDefaults
from nbdev.serve_drv import main as process_notebook

DIRECTIVE = re.compile(r"^\s*#\|.*$\n?", re.MULTILINE)
QUARTO_ATTRIBUTES = re.compile(r"\{target=[^}]*\}")
# the packaged MathJax 2 ships only the STIX-Web fonts: tell it so, before it loads
MATHJAX_FONTS = ('<script type="text/x-mathjax-config">MathJax.Hub.Config({"HTML-CSS": {availableFonts: ["STIX-Web"], '
                 'preferredFont: "STIX-Web", webFont: "STIX-Web", imageFont: null}});</script>')


def mathjax_url() -> str:
    "A file:// URL of MathJax 2 shipped by the jupyter-server-mathjax package."
    import jupyter_server_mathjax
    script = Path(jupyter_server_mathjax.__file__).parent / "static" / "MathJax.js"
    return script.as_uri() + "?config=TeX-AMS-MML_HTMLorMML-full"


def front_matter(nb) -> dict:
    "The YAML front matter nbdev put in the first raw cell (title, description, output-file)."
    first = nb.cells[0] if nb.cells else None
    if first is None or first.cell_type != "raw" or not first.source.startswith("---"):
        return {}
    return yaml.safe_load(first.source.strip().strip("-")) or {}


def prepare(nb, pages: list[tuple[str, str]]) -> None:
    "Turn front matter into a heading, hide `echo: false` inputs and strip `#|` directives from shown code."
    meta = front_matter(nb)
    if meta:
        nb.cells.pop(0)
    nav = " · ".join(f"[{title}]({href})" for title, href in pages)
    heading = f"{nav}\n\n# {meta.get('title', '')}\n\n" + (f"> {meta['description']}" if meta.get("description") else "")
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(heading))
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if re.search(r"^#\|\s*echo:\s*false", cell.source, re.MULTILINE):
            cell.metadata.setdefault("tags", []).append("remove_input")
        cell.source = DIRECTIVE.sub("", cell.source)
        for output in cell.get("outputs", []):  # Quarto link attributes in show_doc output mean nothing to nbconvert
            if "text/markdown" in output.get("data", {}):
                output.data["text/markdown"] = QUARTO_ATTRIBUTES.sub("", output.data["text/markdown"])


def local_links(page: str, config) -> str:
    "Point the page's source links and published-site links at this preview's own pages."
    source_url = f"{config.git_url.rstrip('/')}/blob/{config.branch}/{config.lib_path.name}/"
    site_url = f"{config.doc_host.rstrip('/')}/{config.doc_baseurl.strip('/')}/"
    page = re.sub(re.escape(source_url) + r"([\w/]+)\.py#L(\d+)", lambda m: f"source/{m[1]}.py.html#L{m[2]}", page)
    return page.replace(site_url, "")


def write_source_pages(config, out: Path) -> None:
    "Each module of the library as a page with one anchor per line (`#L12`), the target of the local source links."
    (out / "source").mkdir(parents=True, exist_ok=True)
    for module in sorted(Path(config.lib_path).glob("*.py")):
        lines = module.read_text(encoding="utf-8").splitlines()
        body = "\n".join(f'<span id="L{n}"><a href="#L{n}" class="lineno">{n:>4}</a>  {html_escape.escape(line)}</span>'
                         for n, line in enumerate(lines, 1))
        (out / "source" / f"{module.name}.html").write_text(
            f"<!doctype html><html><head><meta charset='utf-8'><title>{module.name}</title>"
            "<style>body{font:13px/1.45 monospace;margin:1em} .lineno{color:#999;text-decoration:none} :target{background:#ffa}</style>"
            f"</head><body><h1>{config.lib_path.name}/{module.name}</h1><pre>{body}</pre></body></html>", encoding="utf-8")


def page_name(path: Path, nb) -> str:
    "The HTML file name Quarto would give this page."
    return "index.html" if path.stem == "index" else front_matter(nb).get("output-file", path.stem + ".html")


def main() -> None:
    parser = argparse.ArgumentParser(description="Render the docs preview (no Quarto needed).")
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to render (default: all of nbs/)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: _site_preview at the project root)")
    args = parser.parse_args()
    config = get_config()
    root = config.config_path
    out = args.out or root / "_site_preview"
    proc = root / "_proc"
    notebooks, failed = [], []
    sources = [p.resolve() for p in args.notebooks] or sorted((root / "nbs").glob("*.ipynb"))
    for source in sorted(sources, key=lambda p: (p.stem != "index", p.stem)):
        target = proc / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            process_notebook((source, target, FilterDefaults))
            notebooks.append(target)
        except Exception as error:  # keep rendering the others, report at the end
            failed.append(f"{source.name}: {str(error).splitlines()[0]}")
    loaded = [(path, nbformat.read(path, as_version=4)) for path in notebooks]
    pages = [(front_matter(nb).get("title", path.stem), page_name(path, nb)) for path, nb in loaded]
    exporter = HTMLExporter(template_name="lab", mathjax_url=mathjax_url(), exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"remove_input"}, enabled=True), enabled=True)
    out.mkdir(parents=True, exist_ok=True)
    for (path, nb), (title, href) in zip(loaded, pages):
        prepare(nb, pages)
        html, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
        html = local_links(html.replace("<head>", "<head>\n" + MATHJAX_FONTS, 1), config)
        (out / href).write_text(html, encoding="utf-8")
        print(f"{path.name} -> {out / href}")
    shutil.copy(root / "nbs" / "styles.css", out / "styles.css")
    write_source_pages(config, out)
    if failed:
        raise SystemExit("nbdev could not process these notebooks (a cell that mixes imports with other code is run "
                         "out of order by nbdev's docs processing; keep imports in cells of their own):\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
