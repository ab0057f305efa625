"""Did a chapter edit change the library's code, or only its layout? Compares modules at a git revision with the
working tree, definition by definition (and method by method): equal ASTs, once docstrings' whitespace is
normalised, mean only comments, line wrapping and docstring wrapping changed.

    python tools/library_diff.py main nomic_embed/rope.py nomic_embed/mlm.py
    python tools/library_diff.py --moved main nomic_embed/model.py nomic_embed/kernels.py nomic_embed/checkpoints.py

With --moved, the definitions of all the named modules are pooled (a module absent at the revision counts as empty),
so code that moved from one module to another compares with itself and the move is listed.
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

def old_text(rev, path):
    return subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True).stdout


def compare(rev, path):
    old = old_text(rev, path)
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

def changed_members(a, b):
    if isinstance(a, ast.ClassDef) and isinstance(b, ast.ClassDef):
        ma = {getattr(n, "name", ast.unparse(n)[:40]): ast.dump(n) for n in a.body}
        mb = {getattr(n, "name", ast.unparse(n)[:40]): ast.dump(n) for n in b.body}
        return sorted(set(ma) ^ set(mb) | {m for m in ma if m in mb and ma[m] != mb[m]})
    return []


def compare_moved(rev, paths):
    "Pool the top-level definitions of `paths` at `rev` and now; report AST changes, moves, removals and additions."
    old, new = {}, {}
    for path in paths:
        for name, node in defs(old_text(rev, path) or "").items():
            old[name] = (path, node)
        if Path(path).exists():
            for name, node in defs(Path(path).read_text()).items():
                new[name] = (path, node)
    imports = lambda name: name.startswith(("import ", "from "))
    changed = [name for name in old if name in new and ast.dump(old[name][1]) != ast.dump(new[name][1])
               and not imports(name)]
    moved = [f"{name}: {old[name][0]} -> {new[name][0]}" for name in old if name in new and old[name][0] != new[name][0]]
    removed = [name for name in old if name not in new and not imports(name)]
    added = [name for name in new if name not in old and not imports(name)]
    print(f"{len(old)} top-level statements at {rev}, {len(new)} now, in {', '.join(paths)}")
    for name in changed:
        members = changed_members(old[name][1], new[name][1])
        print(f"  AST changed: {name}" + (f" (members: {', '.join(members)})" if members else ""))
    print(f"  moved: {len(moved)}", *moved, sep="\n    ")
    print(f"  removed: {removed or 'none'}; added: {added or 'none'}")
    return changed, removed, added


if __name__ == "__main__":
    if sys.argv[1] == "--moved":
        compare_moved(sys.argv[2], sys.argv[3:])
    else:
        for path in sys.argv[2:]:
            compare(sys.argv[1], path)
