"""Docs that run: every ```python block of README.md and docs/*.md, against the shipped model.

Blocks of one file run in order in one fresh namespace (later blocks use names
from earlier ones), in this process (the imports are paid once), offline, in a
temporary working folder. A block whose first line is a marker such as
``# needs: hub`` or ``# needs: hub, gpu`` needs what the test machine may
lack: it is skipped unless every need is met (``gpu``: CUDA is available;
``hub``: never, the tests run offline). The list of skipped blocks is printed, and more than a
fifth of all blocks skipped fails the test. Tracebacks name the Markdown file
and its line numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NEEDS = {"hub", "gpu"}
MAX_SKIPPED_SHARE = 1 / 5
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"\A#\s*needs:\s*(.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the block's first code line
    code: str
    needs: frozenset[str]

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The ```python blocks of one Markdown file, in order, with their ``# needs:`` markers."""
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        code = match.group(1)
        marker = MARKER.match(code)
        needs = frozenset(n.strip() for n in marker.group(1).split(",")) if marker else frozenset()
        found.append(Block(path, text.count("\n", 0, match.start(1)) + 1, code, needs))
    return found


def available() -> set[str]:
    import torch

    return {"gpu"} if torch.cuda.is_available() else set()


ALL = [block for path in DOCS for block in blocks(path)]


def skipped() -> list[Block]:
    have = available()
    return [block for block in ALL if not block.needs <= have]


def test_markers_name_known_needs():
    unknown = {block.name: sorted(block.needs - NEEDS) for block in ALL if block.needs - NEEDS}
    assert not unknown, f"unknown '# needs:' markers (known: {sorted(NEEDS)}): {unknown}"


def test_few_blocks_skipped(capsys):
    skip = skipped()
    with capsys.disabled():
        print(f"\ndocs: {len(ALL)} python blocks, {len(skip)} skipped")
        for block in skip:
            print(f"  skipped {block.name} (needs {', '.join(sorted(block.needs))})")
    assert ALL, "no ```python blocks found"
    assert len(skip) <= MAX_SKIPPED_SHARE * len(ALL), (
        f"{len(skip)} of {len(ALL)} blocks skipped, more than a fifth: {[b.name for b in skip]}")


@pytest.mark.parametrize("path", [p for p in DOCS if blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_blocks_run(path, tmp_path, monkeypatch):
    skip = set(skipped())
    run = [block for block in blocks(path) if block not in skip]
    if not run:
        pytest.skip(f"every block of {path.name} needs what this machine lacks")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # docs write "out/..." freely
    namespace: dict = {"__name__": "__main__"}
    for block in run:
        # Padded so that tracebacks point at the Markdown file's own lines.
        code = compile("\n" * (block.line - 1) + block.code, str(block.path), "exec")
        try:
            exec(code, namespace)
        except Exception as error:
            raise AssertionError(f"the python block at {block.name} failed: {error!r}") from error
