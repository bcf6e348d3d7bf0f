"""A Hugging Face dataset as a dataset: saved with ``save_to_disk``, or local parquet files.

Column names differ from dataset to dataset; ``columns`` maps mmlens' fields
(``id``, ``image``, ``images``, ``prompt``, ``answer``, ``box``) to the dataset's
own. An image column may hold decoded images (the ``Image`` feature), raw
bytes, ``{"bytes", "path"}`` dicts or paths (relative to the dataset's folder).
Nothing is downloaded: ``datasets`` is only asked to read local files.

Example:
    >>> reader = HFReader("vqa_saved/", columns={"prompt": "question"})  # doctest: +SKIP
    >>> reader.load(0).prompt  # doctest: +SKIP
    '<image> what is on the table ?'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mmlens.data.readers.base import Reader
from mmlens.data.readers.jsonl import sample_from_record
from mmlens.data.sample import Sample
from mmlens.errors import MmlensError

FIELDS = ("id", "image", "images", "prompt", "answer", "box")


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and any((path / name).is_file()
                                 for name in ("state.json", "dataset_info.json", "dataset_dict.json"))


class HFReader(Reader):
    """Rows of a local dataset (``save_to_disk`` folder, or parquet files), columns mapped by ``columns``."""

    name = "hf"

    def __init__(self, path: str | Path | list[str | Path], columns: Mapping[str, str] | None = None,
                 split: str | None = None) -> None:
        try:
            import datasets
        except ImportError:
            raise MmlensError("reading Hugging Face datasets needs the datasets package: pip install datasets") from None
        paths = [Path(p) for p in (path if isinstance(path, list) else [path])]
        self.paths, self.split = paths, split
        unknown = sorted(set(columns or {}) - set(FIELDS))
        if unknown:
            raise MmlensError(f"unknown field(s) {', '.join(unknown)} in the column map; fields: {', '.join(FIELDS)}")
        self.columns = {field: (columns or {}).get(field, field) for field in FIELDS}
        for p in paths:
            if not p.exists():
                raise MmlensError(f"no such dataset: {p}")
        if len(paths) == 1 and is_saved_dataset(paths[0]):
            self.kind = "disk"
            loaded = datasets.load_from_disk(str(paths[0]))
        else:
            self.kind = "parquet"
            files = [str(f) for p in paths for f in (sorted(p.glob("*.parquet")) if p.is_dir() else [p])]
            if not files:
                raise MmlensError(f"no parquet files in {', '.join(map(str, paths))}")
            loaded = datasets.load_dataset("parquet", data_files=files, split="train")
        if isinstance(loaded, datasets.DatasetDict):
            if split is None:
                if len(loaded) != 1:
                    raise MmlensError(f"the dataset has splits {', '.join(loaded)}: choose one (split option)")
                split = next(iter(loaded))
            if split not in loaded:
                raise MmlensError(f"no split {split!r}; the dataset has {', '.join(loaded)}")
            loaded = loaded[split]
            self.split = split
        self.dataset = loaded
        names = set(loaded.column_names)
        for field in ("prompt",):
            if self.columns[field] not in names:
                raise MmlensError(f"no column {self.columns[field]!r} for the {field}; columns: "
                                  f"{', '.join(sorted(names))} (map it with --column {field}=NAME)")
        if self.columns["image"] not in names and self.columns["images"] not in names:
            raise MmlensError(f"no image column ({self.columns['image']!r} or {self.columns['images']!r}); columns: "
                              f"{', '.join(sorted(names))} (map it with --column image=NAME)")
        self.root = paths[0] if paths[0].is_dir() else paths[0].parent

    def __len__(self) -> int:
        return len(self.dataset)

    def options(self) -> dict[str, Any]:
        mapped = {k: v for k, v in self.columns.items() if k != v}
        return {"reader": self.name, "kind": self.kind, "path": [str(p.resolve()) for p in self.paths],
                "columns": mapped, "split": self.split}

    def row_id(self, index: int) -> str:
        column = self.columns["id"]
        if column in self.dataset.column_names:
            return str(self.dataset[index][column])
        return f"row-{index}"

    def _load(self, index: int) -> Sample:
        row = self.dataset[index]
        record = {field: row[column] for field, column in self.columns.items() if column in row}
        row_id = str(record.pop("id", f"row-{index}"))
        return sample_from_record(row_id, record, self.root)
