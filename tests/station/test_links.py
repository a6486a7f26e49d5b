"""Every relative link in the shipped Markdown resolves to a file in the repository.

The shipped bundle reports linked figures that never were in the repository (kept out on
purpose: they show dataset images); a reader got broken images. "In the repository"
means tracked or about to be (untracked, not ignored): a figure left on disk by a local
run but ignored by git would pass an existence check and still be missing for everyone else.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
REFERENCE = re.compile(r"^ {0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)  # [id]: target
FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
INDENTED_CODE = re.compile(r"(?:^(?: {4}|\t).*\n?)+", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def repo_files() -> set[str]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: which files belong to the repository is unknown")
    return {p for p in out.decode("utf-8", "surrogateescape").split("\0") if p and (ROOT / p).exists()}


def markdown_files() -> list[Path]:
    return sorted({*ROOT.glob("models/**/*.md"), *ROOT.glob("docs/*.md"), ROOT / "README.md"})


def prose(text: str) -> str:
    """The text without code blocks and spans, where brackets are not links."""
    for pattern in (FENCE, INDENTED_CODE, CODE_SPAN):
        text = pattern.sub("", text)
    return text


def links(text: str) -> list[str]:
    body = prose(text)
    return [m.group(1) for m in LINK.finditer(body)] + [m.group(1) for m in REFERENCE.finditer(body)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE)}


def broken_links(md: Path, files: set[str]) -> list[str]:
    dirs = {str(Path(f).parent) for f in files} | {str(p) for f in files for p in Path(f).parents}
    bad = []
    for target in links(md.read_text(encoding="utf-8")):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md.resolve()
        try:
            rel = dest.relative_to(ROOT.resolve()).as_posix()
        except ValueError:
            bad.append(f"{target} (outside the repository)")
            continue
        if rel not in files and rel not in dirs:
            bad.append(f"{target} ({rel} is not in the repository)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target} (no heading #{anchor} in {rel})")
    return bad


def test_the_link_finder_sees_links_and_skips_code() -> None:
    text = ("![a](figures/a.png) [b](../b.md#part \"t\") `[c](not/a/link)`\n[d]: ref/d.txt\n\n"
            "```\n[e](fenced/e.md)\n```\n\n    [f](indented/f.md)\n")
    assert links(text) == ["figures/a.png", "../b.md#part", "ref/d.txt"]
    assert slug("Soak (issue 6)") == "soak-issue-6" and slug("`edge-gate` and the *PLC*") == "edge-gate-and-the-plc"


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves_to_a_file_in_the_repository(md: Path) -> None:
    assert broken_links(md, repo_files()) == []
