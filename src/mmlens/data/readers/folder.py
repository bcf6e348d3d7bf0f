"""A folder of images as a dataset: one row per image file, its prompt from a template.

Files are found recursively and sorted by relative path, so row numbers do not
depend on the file system's listing order. The template may use ``{name}``
(file name), ``{stem}`` (without extension) and ``{parent}`` (the sub-folder,
often a class label).

Example:
    >>> reader = FolderReader("photos/", prompt="<image> is this a {parent} ?")  # doctest: +SKIP
    >>> reader.load(0).prompt  # doctest: +SKIP
    '<image> is this a cat ?'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmlens.data.readers.base import BadRow, Reader, open_row_image
from mmlens.data.sample import Sample
from mmlens.errors import MmlensError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_PROMPT = "<image> describe the image ."


class FolderReader(Reader):
    """Every image file under ``root`` (sorted by relative path), with ``prompt`` as its template."""

    name = "folder"

    def __init__(self, root: str | Path, prompt: str | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise MmlensError(f"no such folder: {self.root}")
        self.prompt = prompt or DEFAULT_PROMPT
        try:
            self.prompt.format(name="", stem="", parent="")
        except (KeyError, IndexError, ValueError) as error:
            raise MmlensError(f"the prompt template {self.prompt!r} is not valid: use {{name}}, {{stem}} or "
                              f"{{parent}} ({error})") from None
        self.files = sorted((p.relative_to(self.root) for p in self.root.rglob("*")
                             if p.suffix.lower() in EXTENSIONS and not p.name.startswith(".")),
                            key=lambda p: p.as_posix())
        if not self.files:
            raise MmlensError(f"no image files ({', '.join(EXTENSIONS)}) under {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def options(self) -> dict[str, Any]:
        return {"reader": self.name, "path": str(self.root.resolve()), "prompt": self.prompt}

    def row_id(self, index: int) -> str:
        return self.files[index].as_posix()

    def _load(self, index: int) -> Sample:
        relative = self.files[index]
        row_id = relative.as_posix()
        image = open_row_image(row_id, self.root / relative)
        parent = relative.parent.name
        prompt = self.prompt.format(name=relative.name, stem=relative.stem, parent=parent)
        return Sample(id=row_id, image=image, prompt=prompt, meta={"path": str(self.root / relative)})


__all__ = ["BadRow", "DEFAULT_PROMPT", "FolderReader"]
