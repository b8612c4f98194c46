"""The library files each stage imports, to list as its deps in dvc.yaml (DVC reruns a stage when one changes).

    python tools/stage_deps.py          # rewrite the src/ deps of every stage in dvc.yaml
    python tools/stage_deps.py --check  # exit 1 and name the stages whose lists differ (tests run this)

A stage's deps are every ``sae_pipeline`` module its script imports, transitively (a package's ``__init__``
included), plus the data files (``.js``, ``.css``) of the packages it imports, and nothing else.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_file(mod: str) -> Path:
    base = ROOT / "src" / mod.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def imports(mod: str) -> set[str]:
    """sae_pipeline modules that one module (or stage script, given as a path string) imports, relative imports
    resolved against its own package; function-level (lazy) imports count too."""
    path = Path(mod) if mod.endswith(".py") else module_file(mod)
    is_pkg = path.name == "__init__.py"
    package = [] if mod.endswith(".py") else (mod.split(".") if is_pkg else mod.split(".")[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base.startswith("sae_pipeline"):
                continue
            found.add(base)
            for a in node.names:  # `from pkg import module` imports the module
                if module_file(f"{base}.{a.name}").exists():
                    found.add(f"{base}.{a.name}")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sae_pipeline.")}
    for m in list(found):  # importing a.b.c runs the __init__ of a and a.b too
        parts = m.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return found


def library_deps(script: Path) -> list[str]:
    todo, seen = list(imports(str(script))), set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += imports(m)
    want = {str(module_file(m).relative_to(ROOT)) for m in seen}
    for m in seen:
        if module_file(m).name == "__init__.py":
            want |= {str(p.relative_to(ROOT)) for p in module_file(m).parent.iterdir() if p.suffix in (".js", ".css")}
    return sorted(want)


def sync(text: str) -> tuple[str, list[str]]:
    """dvc.yaml's text with each stage's src/ deps replaced by the computed list, and the stages that changed."""
    out, changed, stage = [], [], None
    for line in text.splitlines(keepends=True):
        m = re.match(r"^  ([a-z_]+):\s*$", line)
        if m:
            stage = m.group(1)
        if re.match(r"^\s+- src/", line):
            continue
        out.append(line)
        m = re.match(r"^(\s+)- (stages/([a-z_]+)\.py)\s*$", line)  # (foreach stages nest their deps deeper)
        if m and m.group(3) == stage:
            out += [f"{m.group(1)}- {d}\n" for d in library_deps(ROOT / m.group(2))]
    new = "".join(out)
    if new != text:
        old_stages = {s: b for s, b in _blocks(text)}
        changed = [s for s, b in _blocks(new) if old_stages.get(s) != b]
    return new, changed


def _blocks(text: str):
    return re.findall(r"(?ms)^  ([a-z_]+):\n(.*?)(?=^  [a-z_]+:\n|^\S|\Z)", text)


if __name__ == "__main__":
    path = ROOT / "dvc.yaml"
    text = path.read_text()
    new, changed = sync(text)
    if "--check" in sys.argv:
        if changed:
            sys.exit(f"dvc.yaml: the src/ deps of {', '.join(changed)} differ from their imports; run "
                     "python tools/stage_deps.py")
    elif new != text:
        path.write_text(new)
        print("updated:", ", ".join(changed))
