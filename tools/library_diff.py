"""Did a chapter edit change the library's code, or only its layout? Compares modules at a git revision with the
working tree, definition by definition (and method by method): equal ASTs, once docstrings' whitespace is
normalised, mean only comments, line wrapping and docstring wrapping changed.

    python tools/library_diff.py main nomic_embed/rope.py nomic_embed/mlm.py
"""
import ast
import subprocess
import sys
from pathlib import Path

def norm(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                first.value.value = " ".join(first.value.value.split())
    return tree

def defs(text):
    out = {}
    for node in norm(ast.parse(text)).body:
        name = getattr(node, "name", None) or ast.unparse(node)[:50]
        out[name] = node
    return out

def compare(rev, path):
    old = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True).stdout
    a, b = defs(old), defs(Path(path).read_text())
    changed = []
    for k in a:
        if k in b and ast.dump(a[k]) != ast.dump(b[k]):
            if isinstance(a[k], ast.ClassDef):
                ma = {getattr(n, "name", ast.unparse(n)[:40]): ast.dump(n) for n in a[k].body}
                mb = {getattr(n, "name", ast.unparse(n)[:40]): ast.dump(n) for n in b[k].body}
                changed.append(f"{k}.{[m for m in ma if ma[m] != mb.get(m)]}")
            else:
                changed.append(k)
    removed = [k for k in a if k not in b]; added = [k for k in b if k not in a]
    print(f"{path}: {len(a)} top-level statements; AST changed: {changed or 'none'}; removed: {removed or 'none'}; "
          f"added: {added or 'none'}; same order: {[k for k in a if k in b] == [k for k in b if k in a]}")

if __name__ == "__main__":
    for path in sys.argv[2:]:
        compare(sys.argv[1], path)
