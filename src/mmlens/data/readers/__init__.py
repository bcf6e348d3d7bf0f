"""Datasets in: readers that yield :class:`~mmlens.data.Sample` rows lazily, by index.

:func:`open_reader` picks the reader from what ``spec`` names:

=============================== ============================================
``shapes:test[0:500]``          the shapes world (and registered worlds)
``questions.jsonl``             JSON Lines (:mod:`.jsonl`)
``data.parquet``, a folder of   local parquet through ``datasets`` (:mod:`.hf`)
parquet files
a ``save_to_disk`` folder       a saved Hugging Face dataset (:mod:`.hf`)
any other folder                its image files (:mod:`.folder`)
=============================== ============================================

Example:
    >>> reader = open_reader("shapes:test[0:2]")
    >>> reader.options()
    {'reader': 'world', 'world': 'shapes', 'split': 'test', 'start': 0, 'stop': 2}
    >>> [s.id for s in reader]
    ['shapes-test-0', 'shapes-test-1']
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from mmlens.data.readers.base import BadRow, Reader, check_slots, images_of
from mmlens.data.readers.folder import FolderReader
from mmlens.data.readers.hf import HFReader, is_saved_dataset
from mmlens.data.readers.jsonl import JsonlReader
from mmlens.data.readers.worlds import WorldReader, is_world_spec, register_world
from mmlens.errors import MmlensError

__all__ = ["BadRow", "FolderReader", "HFReader", "JsonlReader", "Reader", "WorldReader", "check_slots",
           "images_of", "open_reader", "register_world"]


def open_reader(spec: str | Path, *, prompt: str | None = None, columns: Mapping[str, str] | None = None,
                split: str | None = None) -> Reader:
    """The reader for ``spec`` (see the module's table); ``prompt`` is a folder's template, ``columns`` and
    ``split`` are a Hugging Face dataset's column map and split.

    Example:
        >>> open_reader("shapes:val[3:5]").load(1).id
        'shapes-val-4'
    """
    text = str(spec)
    if is_world_spec(text):
        _unused(text, prompt=prompt, columns=columns, split=split)
        return WorldReader.parse(text)
    path = Path(text)
    if not path.exists():
        raise MmlensError(f"no such dataset: {text} (a folder, a .jsonl or .parquet file, or shapes:test[0:100])")
    if path.is_file() and path.suffix.lower() == ".jsonl":
        _unused(text, prompt=prompt, columns=columns, split=split)
        return JsonlReader(path)
    if (path.is_file() and path.suffix.lower() == ".parquet") or is_saved_dataset(path) or (
            path.is_dir() and any(path.glob("*.parquet"))):
        _unused(text, prompt=prompt)
        return HFReader(path, columns=columns, split=split)
    if path.is_dir():
        _unused(text, columns=columns, split=split)
        return FolderReader(path, prompt=prompt)
    raise MmlensError(f"cannot read {text}: give a folder of images, a .jsonl or .parquet file, a save_to_disk "
                      "folder, or shapes:split[start:stop]")


def _unused(spec: str, **options: object) -> None:
    """Refuse options the chosen reader would ignore: a silently dropped template is a wrong dataset."""
    given = [name for name, value in options.items() if value]
    if given:
        raise MmlensError(f"{spec}: option(s) {', '.join(given)} do not apply to this kind of dataset")
