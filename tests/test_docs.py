"""The README as a user reads it: its Python snippets run, and the sections other files point to exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_cas_snippet_runs():
    block = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "CASEvaluator(" in b)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    result = namespace["result"]
    assert result.total.shape == (2,) and result.total.requires_grad


def test_readme_sections_named_elsewhere_exist():
    headings = {line.lstrip("#").strip() for line in README.splitlines() if line.startswith("#")}
    cited = [
        (path.relative_to(ROOT), name)
        for path in sorted((ROOT / "experiments").rglob("*.yaml"))
        for name in re.findall(r'README "([^"]+)"', path.read_text())
    ]
    assert cited and all(name in headings for _, name in cited), [c for c in cited if c[1] not in headings]
