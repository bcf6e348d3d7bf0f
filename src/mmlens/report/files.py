"""Writing results to disk and reading stored ones back: the storage layer over plain result data.

Results are data (:class:`~mmlens.attribution.Explanation`,
:class:`~mmlens.neurons.NeuronSet`, :class:`~mmlens.neurons.WeightSet`); this
module alone knows files:

- an explanation is ``explanation.json`` (its :meth:`to_json`) plus, when
  asked, one overlay PNG per method, answer token and image;
- a neuron or weight set is ``<path>.safetensors`` (its tensors) plus
  ``<path>.json`` (names and metadata), from its ``to_tensors()``; nothing is
  pickled;
- a causal trace is ``trace.json``; a lens run ``lens.json`` (logit lens,
  attention flow, knockout); a neuron run ``neurons.json`` beside its sets.

Every result JSON starts with its ``format`` and ``schema_version``; every file
gets the usual mode (``0644`` under umask ``022``). :func:`load_result` reads
any result folder back, with the folder's ``manifest.json``
(:mod:`mmlens.report.output`).

Example:
    >>> import torch
    >>> from mmlens.neurons import NeuronSet
    >>> chosen = NeuronSet(["lm.L0.neurons", "lm.L1.neurons"], torch.tensor([3, 7]),
    ...                    torch.tensor([0.9, 0.8]), ["image", "text"])
    >>> tensors_path, json_path = save_neuron_set(chosen, "/tmp/chosen")
    >>> load_neuron_set("/tmp/chosen").labels
    ['image', 'text']
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from mmlens.errors import MmlensError
from mmlens.report.output import SCHEMA_VERSION, file_mode, read_manifest

if TYPE_CHECKING:  # storage reads results; it imports no model code at runtime
    from mmlens.attribution.explanation import Explanation
    from mmlens.causal import CausalTrace
    from mmlens.lens import AttentionFlow, Knockout, LogitLens
    from mmlens.neurons.coupled import WeightSet
    from mmlens.neurons.neuron_set import NeuronSet


def save_explanation(explanation: "Explanation", folder: str | Path, figures: bool = True) -> Path:
    """Write ``explanation.json`` (and, with ``figures``, one PNG overlay per method and token) into ``folder``.

    Example:
        >>> import mmlens
        >>> from PIL import Image
        >>> e = mmlens.explain(mmlens.load("tiny-llava"), "<image> hi", [Image.new("RGB", (64, 64))],
        ...                    methods=["rollout"], max_new_tokens=1)
        >>> (save_explanation(e, "/tmp/explained", figures=False) / "explanation.json").is_file()
        True
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_json(explanation.to_json(), folder / "explanation.json", "mmlens.Explanation")
    if figures:
        from mmlens.report.figures import save_overlays  # matplotlib only when figures are asked for

        save_overlays(explanation, folder)
    return folder


def save_neuron_set(neurons: "NeuronSet", path: str | Path) -> tuple[Path, Path]:
    """Write ``path.safetensors`` and ``path.json``; returns both paths (``path`` may carry either suffix).

    Example:
        >>> [p.suffix for p in save_neuron_set(chosen, "/tmp/chosen.json")]
        ['.safetensors', '.json']
    """
    return _save(*neurons.to_tensors(), path)


def load_neuron_set(path: str | Path) -> "NeuronSet":
    """Read a set written by :func:`save_neuron_set` (give the path with or without a suffix).

    Example:
        >>> len(load_neuron_set("/tmp/chosen.safetensors"))
        2
    """
    from mmlens.neurons.neuron_set import FORMAT, NeuronSet

    return NeuronSet.from_tensors(*_load(path, FORMAT, "neuron set"))


def save_weight_set(weights: "WeightSet", path: str | Path) -> tuple[Path, Path]:
    """Write ``path.safetensors`` and ``path.json`` for a :class:`~mmlens.neurons.WeightSet`; returns both paths.

    Example:
        >>> from mmlens.neurons import WeightSet
        >>> found = WeightSet(["lm_head.weight"], torch.tensor([1]), torch.tensor([2]), torch.ones(1))
        >>> load_weight_set(save_weight_set(found, "/tmp/found")[1]).params
        ['lm_head.weight']
    """
    return _save(*weights.to_tensors(), path)


def load_weight_set(path: str | Path) -> "WeightSet":
    """Read a set written by :func:`save_weight_set` (give the path with or without a suffix)."""
    from mmlens.neurons.coupled import FORMAT, WeightSet

    return WeightSet.from_tensors(*_load(path, FORMAT, "weight set"))


def save_trace(trace: "CausalTrace", folder: str | Path) -> Path:
    """Write ``trace.json`` (the trace's :meth:`to_json`) into ``folder``; returns its path.

    Example:
        >>> import mmlens
        >>> from mmlens.data.shapes import make_sample
        >>> result = mmlens.trace(mmlens.load("tiny-llava"), make_sample("test", 0, "colour"), components=["resid"])
        >>> save_trace(result, "/tmp/traced").name
        'trace.json'
    """
    return save_json(trace.to_json(), Path(folder) / "trace.json", "mmlens.CausalTrace")


def save_lens(lens: "LogitLens", flow: "AttentionFlow", knockout: "Knockout | None", folder: str | Path) -> Path:
    """Write ``lens.json``: the logit lens, the attention flow and (if run) the knockout sweep; returns its path.

    Example:
        >>> import mmlens
        >>> from mmlens.lens import attention_flow, logit_lens
        >>> model = mmlens.load("tiny-llama")
        >>> batch = model.prepare("hello")
        >>> save_lens(logit_lens(model, batch), attention_flow(model, batch), None, "/tmp/lensed").name
        'lens.json'
    """
    payload = {"lens": lens.to_json(), "flow": flow.to_json(),
               "knockout": knockout.to_json() if knockout is not None else None}
    return save_json(payload, Path(folder) / "lens.json", "mmlens.Lens")


def save_json(payload: dict[str, Any], path: str | Path, format: str, indent: int | None = None) -> Path:
    """Write ``payload`` as JSON, led by its ``format`` and ``schema_version``; returns the path.

    Example:
        >>> json.loads(save_json({"answer": "red"}, "/tmp/result.json", "mmlens.Example").read_text())
        {'format': 'mmlens.Example', 'schema_version': 1, 'answer': 'red'}
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": format, "schema_version": SCHEMA_VERSION, **payload}, indent=indent))
    return path


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write named tensors as safetensors with the usual file mode (safetensors alone makes them ``0600``).

    Example:
        >>> oct(save_tensors({"x": torch.zeros(2)}, "/tmp/x.safetensors").stat().st_mode & 0o777)  # doctest: +SKIP
        '0o644'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(path))
    os.chmod(path, file_mode())
    return path


@dataclass
class StoredResult:
    """A result folder read back by :func:`load_result`: what ran, and what it found.

    ``kind`` is ``"explanation"``, ``"trace"``, ``"lens"`` or ``"neurons"``;
    ``data`` the result's JSON; ``manifest`` the folder's ``manifest.json``
    (None for folders written before manifests); ``neuron_sets`` the
    :class:`~mmlens.neurons.NeuronSet` files of a neurons run, by name.
    """

    kind: str
    folder: Path
    data: dict[str, Any]
    manifest: dict[str, Any] | None = None
    neuron_sets: dict[str, "NeuronSet"] = field(default_factory=dict)

    @property
    def schema_version(self) -> int:
        """The schema version of :attr:`data` (0: written before versions)."""
        return int(self.data.get("schema_version", 0))


#: The JSON file that names each kind of result folder.
RESULT_FILES = {"explanation": "explanation.json", "trace": "trace.json", "lens": "lens.json",
                "neurons": "neurons.json", "heads": "heads.json", "circuit": "circuit.json"}


def load_result(folder: str | Path) -> StoredResult:
    """Read any mmlens result folder (``mmlens explain``, ``trace``, ``lens``, ``neurons``, ``heads``, ``circuit``) back.

    ``folder`` may also be the result's JSON file itself.

    Example:
        >>> _ = save_json({"answer": "red"}, "/tmp/stored/explanation.json", "mmlens.Explanation")
        >>> stored = load_result("/tmp/stored")
        >>> stored.kind, stored.data["answer"], stored.schema_version
        ('explanation', 'red', 1)
    """
    path = Path(folder)
    names = {name: kind for kind, name in RESULT_FILES.items()}
    if path.is_file() and path.name in names:
        path, kinds = path.parent, [names[path.name]]
    elif path.is_dir():
        kinds = [kind for kind, name in RESULT_FILES.items() if (path / name).is_file()]
    else:
        raise MmlensError(f"no such result folder: {path}")
    if not kinds:
        raise MmlensError(f"{path} holds no mmlens result ({', '.join(RESULT_FILES.values())})")
    manifest = read_manifest(path)
    kind = manifest["result"] if manifest and manifest.get("result") in kinds else kinds[0]
    try:
        data = json.loads((path / RESULT_FILES[kind]).read_text())
    except ValueError as error:
        raise MmlensError(f"{path / RESULT_FILES[kind]} is not valid JSON ({error})") from None
    if int(data.get("schema_version", 0)) > SCHEMA_VERSION:
        raise MmlensError(f"{path / RESULT_FILES[kind]} has schema version {data['schema_version']}; this mmlens "
                          f"reads up to {SCHEMA_VERSION}: upgrade mmlens")
    sets = {p.stem: load_neuron_set(p) for p in sorted(path.glob("neurons_*.safetensors"))
            if p.with_suffix(".json").is_file()}
    return StoredResult(kind, path, data, manifest, sets)


def _save(tensors: dict[str, torch.Tensor], header: dict[str, Any], path: str | Path) -> tuple[Path, Path]:
    tensors_path, json_path = _paths(path)
    save_tensors(tensors, tensors_path)
    json_path.write_text(json.dumps({**header, "schema_version": SCHEMA_VERSION}, indent=1))
    return tensors_path, json_path


def _load(path: str | Path, format: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON header stored at ``path``, checked to be of ``format``."""
    tensors_path, json_path = _paths(path)
    if not tensors_path.is_file() or not json_path.is_file():
        raise MmlensError(f"no {what} at {tensors_path.with_suffix('')} (.safetensors and .json)")
    header = json.loads(json_path.read_text())
    if header.get("format") != format:
        raise MmlensError(f"{json_path} is not an mmlens {what}")
    return load_file(str(tensors_path)), header


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")
