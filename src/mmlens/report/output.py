"""Output folders: every command writes its results through one :class:`OutputFolder`.

The folder is checked before any work (a file, an unwritable place, ``/proc/x``
each give one clear error), built in a hidden sibling
(``.NAME.partial-XXXX``) and moved into place only when the run succeeds, with
a ``manifest.json`` that says what made it. So:

- an interrupted or failed run leaves no new folder, and an old one untouched;
- runs never mix: a non-empty folder is refused unless ``overwrite`` (or, with
  ``replace_own``, the folder holds an earlier run of the same command), and
  it is then swapped out whole, never written into;
- a resumable job (``resumable=True``) writes in place and picks up a folder
  whose manifest matches its own (:func:`can_resume`).

Example:
    >>> with OutputFolder("/tmp/mmlens-doc", "doc", {"n": 1}, overwrite=True) as folder:
    ...     _ = (folder.path / "result.txt").write_text("42")
    >>> sorted(p.name for p in Path("/tmp/mmlens-doc").iterdir())
    ['manifest.json', 'result.txt']
    >>> read_manifest("/tmp/mmlens-doc")["parameters"]
    {'n': 1}
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import platform
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from mmlens.errors import MmlensError
from mmlens.models.weights import weights_sha256  # noqa: F401  (re-exported: manifests record it)
from mmlens.provenance import mmlens_version

if TYPE_CHECKING:
    from mmlens.model import Model

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mmlens.Manifest"
SCHEMA_VERSION = 1  # of manifest.json and of every result JSON (mmlens.report.files)
LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pillow", "matplotlib", "jinja2",
             "typer", "rich", "accelerate")
#: What must agree for a resumable job to pick up a folder: the same job on the same weights.
MATCH_KEYS = ("mmlens_version", "command", "parameters", "seeds", "model")


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed versions of the libraries a result depends on (absent ones are left out).

    Example:
        >>> "torch" in library_versions()
        True
    """
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if "torch" in versions:  # the build tag (+cpu, +cu130) matters to reproduce a result; metadata may omit it
        import torch

        versions["torch"] = torch.__version__
    return versions


def file_mode() -> int:
    """The mode a new file gets here: ``0o666`` less the umask (``0o644`` under the usual ``022``).

    Example:
        >>> oct(file_mode() | 0o022)
        '0o666'
    """
    return 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of ``folder``, or None where it has none (or not an mmlens one).

    Example:
        >>> read_manifest("/nonexistent") is None
        True
    """
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT else None


def manifest_mismatches(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The keys of :data:`MATCH_KEYS` present in ``wanted`` on which ``existing`` differs (empty: same job).

    Example:
        >>> manifest_mismatches({"command": "t", "seeds": {"seed": 0}}, {"command": "t", "seeds": {"seed": 1}})
        ['seeds']
    """
    return [key for key in MATCH_KEYS if key in wanted and existing.get(key) != _jsonable(wanted[key])]


def can_resume(folder: str | Path, wanted: Mapping[str, Any]) -> bool:
    """True when ``folder`` was written by a resumable job with a manifest matching ``wanted``.

    Example:
        >>> can_resume("/nonexistent", {"command": "t"})
        False
    """
    existing = read_manifest(folder)
    return bool(existing and existing.get("resumable")) and not manifest_mismatches(existing, wanted)


class OutputFolder:
    """The ``--out`` folder of one run: checked on entry, written under :attr:`path`, moved into place on exit.

    ``parameters`` are every parameter of the command and ``seeds`` what it
    seeds; both go to the manifest with the mmlens and library versions, the
    times and (after :meth:`set_model`) the model's name and weights hash.

    Example:
        >>> with OutputFolder("/tmp/mmlens-doc", "doc", overwrite=True) as folder:
        ...     folder.path.name.startswith(".mmlens-doc.partial-")
        True
    """

    def __init__(self, out: str | Path, command: str, parameters: Mapping[str, Any] | None = None, *,
                 overwrite: bool = False, replace_own: bool = False, seeds: Mapping[str, Any] | None = None,
                 resumable: bool = False, result: str | None = None) -> None:
        self.out = Path(out)
        self.final = self.out.resolve()
        self.overwrite, self.replace_own, self.resumable = overwrite, replace_own, resumable
        self.resumed = False
        self.path = self.final  # until __enter__ picks the temporary folder
        self.manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT, "schema_version": SCHEMA_VERSION, "mmlens_version": mmlens_version(),
            "command": command, "result": result, "parameters": _jsonable(dict(parameters or {})),
            "seeds": _jsonable(dict(seeds or {})), "model": None, "resumable": resumable,
        }
        self._created: list[Path] = []
        self._temporary = False

    def __enter__(self) -> "OutputFolder":
        self._check()
        self.manifest.update(libraries=library_versions(), platform=platform.platform(), started=_now(),
                             finished=None)
        self._started = time.perf_counter()
        parent = self.final.parent
        self._created = _make_folders(parent, self.out)
        if self.resumed:
            return self
        try:
            if self.resumable:  # a restart must find what was done so far
                self.final.mkdir(exist_ok=True)
                self._write_manifest(complete=False)
            else:
                self.path = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.partial-", dir=parent))
                self._temporary = True
                os.chmod(self.path, 0o777 & ~_umask())  # mkdtemp makes it 0700; a folder is 0755 normally
        except OSError as error:
            self._remove_created()
            raise MmlensError(f"--out {self.out}: cannot write in {parent} ({error.strerror})") from None
        return self

    def set_model(self, model: "Model") -> None:
        """Record the model's name, class and weights hash (a resumed folder must hold the same weights).

        Example:
            >>> import mmlens
            >>> with OutputFolder("/tmp/mmlens-doc", "doc", overwrite=True) as folder:
            ...     folder.set_model(mmlens.load("tiny-llama"))
            >>> read_manifest("/tmp/mmlens-doc")["model"]["name"]
            'tiny-llama'
        """
        self.manifest["model"] = {"name": model.name, "class": type(model.hf).__name__,
                                  "parameters": sum(p.numel() for p in model.hf.parameters()),
                                  "weights_sha256": weights_sha256(model.hf)}
        if self.resumed:
            existing = (read_manifest(self.final) or {}).get("model")
            if existing is not None and manifest_mismatches({"model": existing}, {"model": self.manifest["model"]}):
                raise MmlensError(f"--out {self.out} holds a run on other weights; give --overwrite or another folder")
        if self.resumable:  # a restart must find the model it ran on
            self._write_manifest(complete=False)

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        with _signals_held():
            if error is not None:
                if self._temporary:
                    shutil.rmtree(self.path, ignore_errors=True)
                    self._remove_created()
                return
            self.manifest["finished"] = _now()
            self.manifest["seconds"] = round(time.perf_counter() - self._started, 3)
            self._write_manifest(complete=True)
            if self._temporary:
                self._swap_in()

    # -- the steps ---------------------------------------------------------------------------------------------

    def _check(self) -> None:
        """One clear error for an --out that cannot hold this run, before any work."""
        out, final = self.out, self.final
        if final == Path(final.anchor) or Path.cwd().resolve().is_relative_to(final):
            raise MmlensError(f"--out {out} is the current folder or one above it; give a folder of its own")
        if final.exists() and not final.is_dir():
            raise MmlensError(f"--out {out} is a file, not a folder")
        try:
            occupied = final.is_dir() and any(final.iterdir())
        except OSError as error:
            raise MmlensError(f"--out {out}: cannot read it ({error.strerror})") from None
        if not occupied:
            return
        if self.resumable and can_resume(final, {k: v for k, v in self.manifest.items() if k != "model"}):
            self.resumed = True
            return
        own = read_manifest(final)
        if self.overwrite or (self.replace_own and own is not None and own.get("command") == self.manifest["command"]):
            return
        raise MmlensError(f"--out {out} is not empty; give --overwrite to replace it, or another folder")

    def _write_manifest(self, complete: bool) -> None:
        files = sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*")
                       if p.is_file() and p.name != MANIFEST)
        self.manifest.update(complete=complete, files=files)
        (self.path / MANIFEST).write_text(json.dumps(self.manifest, indent=1))

    def _swap_in(self) -> None:
        """Move the finished temporary folder to ``final``; an old folder there is moved aside, then deleted."""
        old = None
        try:
            if self.final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.old-", dir=self.final.parent))
                os.replace(self.final, old)  # onto mkdtemp's empty folder
            os.replace(self.path, self.final)
        except OSError as error:
            if old is not None and not self.final.exists():
                os.replace(old, self.final)
            raise MmlensError(f"could not move the results into {self.out} ({error.strerror}); "
                              f"they are in {self.path}") from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.path = self.final
        self._temporary = False

    def _remove_created(self) -> None:
        for folder in reversed(self._created):  # the deepest first
            try:
                folder.rmdir()
            except OSError:
                break


def _make_folders(parent: Path, out: Path) -> list[Path]:
    """Create ``parent`` and its missing ancestors; returns those created, outermost first."""
    missing = []
    for folder in [parent, *parent.parents]:
        if folder.exists():
            break
        missing.append(folder)
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise MmlensError(f"--out {out}: {folder} is a file, not a folder") from None
        except OSError as error:
            for made in reversed(created):
                made.rmdir()
            raise MmlensError(f"--out {out}: cannot create {folder} ({error.strerror})") from None
        else:
            created.append(folder)
    if not parent.is_dir():
        raise MmlensError(f"--out {out}: {parent} is a file, not a folder")
    return created


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C for the few calls that must not be cut in half (a swap, a clean-up), then deliver it."""
    caught: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda number, frame: caught.append(number))
    except ValueError:  # not the main thread: nothing to hold
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
            if caught:
                signal.raise_signal(signal.SIGINT)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _jsonable(value: Any) -> Any:
    """``value`` with paths, enums, tuples and other objects turned into plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return str(value)
