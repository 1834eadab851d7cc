"""The README's and docs' links between files lead somewhere: every relative link names a file of the repository,
and every ``#anchor`` a heading of that file, as GitHub makes anchors from headings. docs/3d.md's record moved to
docs/3d-measurements.md (2026-12-07); a link left pointing at a section that moved fails here."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a file's headings: lower case, punctuation but '-' and '_' dropped, spaces to '-', and a
    repeated heading numbered (-1, -2, ...). Headings inside code blocks are not headings."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = re.match(r"#{1,6} (.+)", line)
        if fenced or not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_anchor_rule():
    """The rule as GitHub applies it, on headings of the shapes the docs use."""
    text = "# A b\n## `3d --help` (flags)\n### The mini preset's stage 2, since 2026-12-06\n# A b\n```\n# not\n```\n"
    assert anchors(text) == {"a-b", "3d---help-flags", "the-mini-presets-stage-2-since-2026-12-06", "a-b-1"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no heading with that anchor in {file.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)
