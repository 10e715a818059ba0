"""The README's claims that code can check: the adaptive options table equals the defaults in
the code, and every environment variable the package, its tests, benchmarks and CI name is in
the README's one table (and nothing else is)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from adaptive_prune.methods.adaptive import OPTIONS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _table_after(heading: str) -> list[list[str]]:
    """Rows (cells stripped) of the first Markdown table at or after ``heading``."""
    rest = README[README.index(heading) :]
    rows = []
    for line in rest.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # skip the header and the separator


def test_readme_adaptive_defaults_equal_the_code():
    rows = _table_after('Options of `method="adaptive"`')
    documented = {r[0].strip("`"): ast.literal_eval(r[1].strip("`")) for r in rows}
    assert documented == {name: default for name, (default, _) in OPTIONS.items()}


def test_every_environment_variable_is_documented():
    sources = [*ROOT.glob("adaptive_prune/**/*.py"), *ROOT.glob("tests/**/*.py")]
    sources += [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("benchmarks/*.sh"), *ROOT.glob(".ci/*")]
    used = set()
    for path in [*sources, ROOT / "setup.py"]:
        used |= set(re.findall(r"\b(ADAPTIVE_PRUNE_[A-Z_]*[A-Z])\b", path.read_text()))
    documented = {r[0].strip("`") for r in _table_after("| environment variable |")}
    assert used, "no environment variable found: the scan is broken"
    assert used <= documented, sorted(used - documented)
    assert documented <= used | {"TRITON_INTERPRET"}, sorted(documented - used)


def test_readme_per_image_minimum_example_runs():
    """The per-image minimum example runs as printed and protects the page."""
    rest = README[README.index("**When to use per-image minimums.**") :]
    code = rest[rest.index("```python\n") + 10 : rest.index("```\n", rest.index("```python"))]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    names = [str(n) for n in scope["fx"]["names"]]
    per_image = scope["res"].per_image.tolist()
    assert per_image[names.index("page")] >= 144 and sum(per_image) == int(
        0.25 * scope["vision"].shape[0] + 0.5
    )
