"""Every ```python block of README.md runs as written: each on its own (a fresh namespace, as a reader
pastes it), in a temporary directory. Blocks that use torch are skipped, with the reason, without it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

# Blocks that need many GiB as written, by the heading they sit under, and why: they run with --bigmem.
# None today: the embedding-table block's 10^7 x 64 table and its accumulator are zero pages until written
# (35 MB peak for the whole block, measured).
BIGMEM: dict[str, str] = {}


def readme_blocks() -> list[tuple[str, str]]:
    """(heading it sits under, code) of each python block, in order."""
    if not README.exists():
        return []
    text = README.read_text(encoding="utf-8")
    blocks, heading = [], "top"
    for match in re.finditer(r"^(#+) ([^\n]+)$|^```python\n(.*?)^```$", text, flags=re.M | re.S):
        if match.group(1):
            heading = match.group(2).strip()
        else:
            blocks.append((heading, match.group(3)))
    return blocks


BLOCKS = readme_blocks()


def _params():
    if not BLOCKS:
        reason = "README.md is not beside tests/ (a copy of the tests outside the source tree)"
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=reason), id="no-readme")]
    out = []
    for i, (heading, code) in enumerate(BLOCKS, start=1):
        marks = [pytest.mark.bigmem(reason=BIGMEM[heading])] if heading in BIGMEM else []
        slug = re.sub(r"[^a-z0-9]+", "-", heading.lower())[:40]
        out.append(pytest.param(heading, code, marks=marks, id=f"block{i}-{slug}"))
    return out


@pytest.mark.parametrize("heading, code", _params())
def test_readme_block_runs_as_written(heading, code, tmp_path, monkeypatch):
    if re.search(r"^\s*(import torch|from torch)|cadagrad\.torch", code, flags=re.M):
        pytest.importorskip("torch", reason="this README block uses torch (the test extra installs it)")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md ({heading})", "exec"), {"__name__": "__readme__"})


@pytest.mark.skipif(not BLOCKS, reason="README.md is not beside tests/")
def test_every_bigmem_heading_is_in_the_readme():
    # A renamed heading would otherwise drop the mark and run a many-GiB block by default.
    headings = {heading for heading, _ in BLOCKS}
    assert set(BIGMEM) <= headings
