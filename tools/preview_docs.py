"""Preview the documentation site without Quarto.

Runs nbdev's own notebook processing (the step `nbdev_docs` performs before Quarto renders: show_doc
tables, hidden cells removed, front matter from the title cell) into `_proc/`, then renders every
processed chapter to HTML with `jupyter nbconvert` into `_site_preview/`, with MathJax served from the
local `jupyter-server-mathjax` package so equations render offline. Open `_site_preview/index.html`.

Every page carries the site's navigation as Quarto builds it from `nbs/sidebar.yml`: a sidebar with the book's parts
(Part I, the paper; Part II, the appendices) and previous/next links in the sidebar's order.

Links are made local: show_doc's "source" links (built by nbdev from settings.ini's `git_url` and `branch`) point
to pages of the library's source rendered here (`source/<module>.py.html#L<line>`), and links to the published site
(`doc_host` + `doc_baseurl`) and to other notebooks (`NN_name.ipynb`) point to the pages beside them.

Where Quarto is installed, `nbdev_docs` builds the real site from the same notebooks.
Usage: python tools/preview_docs.py [nbs/00_rope.ipynb ...] [--out _site_preview]
(with notebooks named, only their pages are rendered; the navigation still lists the whole book)
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
NOTEBOOK_LINK = re.compile(r'href="(?:\./)?(\w+)\.ipynb(#[^"]*)?"')
# the layout Quarto gives the site: a fixed sidebar by part on the left, the page beside it, previous/next at the end
LAYOUT_CSS = """<style>
.book-sidebar { position: fixed; top: 0; bottom: 0; left: 0; width: 250px; overflow-y: auto; box-sizing: border-box;
  padding: 1rem 0.8rem; background: #f7f7f9; border-right: 1px solid #e3e3e3; font: 14px/1.4 system-ui, sans-serif; }
.book-sidebar a { color: #2c3e50; text-decoration: none; display: block; padding: 0.15rem 0.4rem; border-radius: 3px; }
.book-sidebar a:hover { background: #e9ecef; }
.book-sidebar li.active > a { background: #2780e3; color: white; }
.book-sidebar .book-title { font-weight: 600; font-size: 16px; margin-bottom: 0.6rem; }
.book-sidebar .book-part { margin: 0.9rem 0 0.3rem 0.4rem; font-weight: 600; color: #6c757d; font-size: 12px;
  text-transform: uppercase; letter-spacing: 0.03em; }
.book-sidebar ul { list-style: none; margin: 0; padding: 0; }
body.jp-Notebook { margin-left: 250px; }
main { max-width: 1000px; margin: 0 auto; }
.book-pagenav { display: flex; justify-content: space-between; gap: 1rem; margin: 2.5rem 0 1.5rem;
  padding-top: 1rem; border-top: 1px solid #e3e3e3; font: 15px/1.4 system-ui, sans-serif; }
.book-pagenav a { text-decoration: none; color: #2780e3; }
.book-pagenav .next { margin-left: auto; text-align: right; }
</style>"""
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


def sidebar_entries(nbs: Path) -> list[tuple[str, str, str | None]]:
    """(part, notebook file name, sidebar text or None for the page's title) for every page of `nbs/sidebar.yml`,
    in reading order; the part is '' at the top level."""
    def walk(items: list, part: str):
        for item in items:
            if isinstance(item, str):
                yield part, item, None
            elif "section" in item:
                yield from walk(item.get("contents", []), item["section"])
            elif "href" in item:
                yield part, item["href"], item.get("text")
    config = yaml.safe_load((nbs / "sidebar.yml").read_text(encoding="utf-8"))
    return list(walk(config["website"]["sidebar"]["contents"], ""))


def html_name(notebook: str) -> str:
    "The page nbdev and Quarto make of a notebook: `00_rope.ipynb` -> `rope.html` (numbers and letters before `_` go)."
    return re.sub(r"^\d+[a-zA-Z0-9]*_", "", Path(notebook).stem.lower()) + ".html"


def notebook_title(path: Path) -> str:
    "A notebook's title as nbdev reads it: its first level-1 Markdown heading."
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "markdown" and (m := re.search(r"^#\s+(.+)$", cell.source, re.MULTILINE)):
            return re.sub(r"`([^`]*)`", r"\1", m[1]).strip()
    return path.stem


def navigation(nbs: Path) -> list[tuple[str, str, str]]:
    "(part, title, page) of every notebook in the sidebar that exists, in reading order (the order of previous/next)."
    return [(part, text or notebook_title(nbs / name), html_name(name))
            for part, name, text in sidebar_entries(nbs) if (nbs / name).exists()]


def sidebar_html(pages: list[tuple[str, str, str]], current: str, site_title: str) -> str:
    "The sidebar: the book's title, then each part's pages, the current one marked."
    parts: dict[str, list[str]] = {}
    for part, title, href in pages:
        active = ' class="active"' if href == current else ""
        parts.setdefault(part, []).append(f'<li{active}><a href="{href}">{html_escape.escape(title)}</a></li>')
    body = "".join((f'<div class="book-part">{html_escape.escape(part)}</div>' if part else "") + f"<ul>{''.join(items)}</ul>"
                   for part, items in parts.items())
    return (f'<nav class="book-sidebar" aria-label="chapters"><a class="book-title" href="index.html">'
            f"{html_escape.escape(site_title)}</a>{body}</nav>")


def pagenav_html(pages: list[tuple[str, str, str]], current: str) -> str:
    "Links to the previous and the next page in the sidebar's order (across parts, as Quarto's page navigation)."
    hrefs = [href for _, _, href in pages]
    if current not in hrefs:
        return ""
    i = hrefs.index(current)
    links = []
    if i > 0:
        links.append(f'<a class="previous" href="{pages[i - 1][2]}">← {html_escape.escape(pages[i - 1][1])}</a>')
    if i + 1 < len(pages):
        links.append(f'<a class="next" href="{pages[i + 1][2]}">{html_escape.escape(pages[i + 1][1])} →</a>')
    return f'<nav class="book-pagenav" aria-label="previous and next">{"".join(links)}</nav>'


def prepare(nb) -> None:
    "Turn front matter into a heading, hide `echo: false` inputs and strip `#|` directives from shown code."
    meta = front_matter(nb)
    if meta:
        nb.cells.pop(0)
    heading = f"# {meta.get('title', '')}\n\n" + (f"> {meta['description']}" if meta.get("description") else "")
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
    page = NOTEBOOK_LINK.sub(lambda m: f'href="{html_name(m[1])}{m[2] or ""}"', page)
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


def main() -> None:
    parser = argparse.ArgumentParser(description="Render the docs preview (no Quarto needed).")
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to render (default: all of nbs/)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: _site_preview at the project root)")
    args = parser.parse_args()
    config = get_config()
    root = config.config_path
    out = args.out or root / "_site_preview"
    proc = root / "_proc"
    nbs = root / "nbs"
    pages = navigation(nbs)
    order = [html_name(name) for _, name, _ in sidebar_entries(nbs)]
    notebooks, failed = [], []
    sources = [p.resolve() for p in args.notebooks] or sorted(nbs.glob("*.ipynb"))
    for source in sorted(sources, key=lambda p: (order.index(html_name(p.name)) if html_name(p.name) in order else len(order), p.stem)):
        target = proc / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            process_notebook((source, target, FilterDefaults))
            notebooks.append(target)
        except Exception as error:  # keep rendering the others, report at the end
            failed.append(f"{source.name}: {str(error).splitlines()[0]}")
    loaded = [(path, nbformat.read(path, as_version=4)) for path in notebooks]
    exporter = HTMLExporter(template_name="lab", mathjax_url=mathjax_url(), exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"remove_input"}, enabled=True), enabled=True)
    out.mkdir(parents=True, exist_ok=True)
    for path, nb in loaded:
        title, href = front_matter(nb).get("title", path.stem), html_name(path.name)
        prepare(nb)
        html, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
        html = html.replace("<head>", "<head>\n" + MATHJAX_FONTS + "\n" + LAYOUT_CSS, 1)
        html = html.replace("<main>", sidebar_html(pages, href, config.title) + "\n<main>", 1)
        html = html.replace("</main>", pagenav_html(pages, href) + "\n</main>", 1)
        html = local_links(html, config)
        (out / href).write_text(html, encoding="utf-8")
        print(f"{path.name} -> {out / href}")
    shutil.copy(root / "nbs" / "styles.css", out / "styles.css")
    write_source_pages(config, out)
    if failed:
        raise SystemExit("nbdev could not process these notebooks (a cell that mixes imports with other code is run "
                         "out of order by nbdev's docs processing; keep imports in cells of their own):\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
