"""Harvest throughput against a bare forward, random-batch reads, bytes per token, and the same harvest through nnsight.

For each model, over the same ``--samples`` shapes-world questions in the
same batches of ``--batch-size``:

- **bare**: read the samples, ``model.prepare`` them, one forward per batch
  under ``no_grad``: what any job over the dataset pays, storing nothing.
- **mmlens**: ``mmlens.store.harvest.harvest`` of every residual-stream site
  (``lm.L*.resid``), float16 on disk, into a fresh store (each file fsynced,
  token table written, manifest committed per shard).
- **nnsight**: the same batches through ``nnsight.NNsight(hf).trace(...)``
  with ``.output.save()`` on every decoder layer, then the non-padding rows of
  each layer as a float16 ``.npy`` per batch (``np.save``, no fsync, no token
  table): the bare minimum of "the same sites on disk".

Throughput is stored (non-padding) tokens per second; the ratio is against
bare (goal: mmlens >= 0.85x). Every figure is the median of ``--repeats``
interleaved runs (machine load hits all alike). Then, on the last mmlens
store: random-token batch reads (``Store.batches(shuffle=True)``, a training
loop's access) in tokens/s and MB/s, and disk bytes per token against the raw
size (sites x d x 2 bytes).

Models: ``shapes-llava`` (the shipped model) and ``llava-geometry``: random
weights with LLaVA-1.5's image geometry (336 px CLIP tower, 576 image tokens)
and a ``--hidden``-wide, ``--layers``-deep decoder (``benchmarks/memory.py``'s
builder), so that forwards are not dwarfed by Python overhead.

Example:
    python benchmarks/harvest.py --samples 32 --repeats 3 --threads 1 --json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, median_seconds  # noqa: E402


def load_model(name: str, hidden: int, layers: int):
    import mmlens

    if name == "llava-geometry":
        from presets import build

        return build("small", "cpu", layers, hidden, torch.float32)
    return mmlens.load(name)


def batches_of(model, reader, batch_size: int) -> list:
    """The prepared batches, in the harvest's order (rows in runs of ``batch_size``)."""
    from mmlens.data.readers import images_of

    rows = [sample for _, sample in reader.read(0, len(reader))]
    return [model.prepare([s.prompt for s in rows[k:k + batch_size]], [images_of(s) for s in rows[k:k + batch_size]])
            for k in range(0, len(rows), batch_size)]


def bare(model, reader, batch_size: int) -> int:
    """Read, prepare, forward; the number of real tokens."""
    tokens = 0
    with torch.no_grad():
        for batch in batches_of(model, reader, batch_size):
            model.forward(batch)
            tokens += int(batch.inputs["attention_mask"].sum())
    return tokens


def mmlens_harvest(model, reader, folder: Path, batch_size: int, shard_size: int) -> dict:
    from mmlens.store.harvest import harvest

    shutil.rmtree(folder, ignore_errors=True)
    return harvest(model, reader, folder, "lm.L*.resid", dtype="float16", shard_size=shard_size,
                   batch_size=batch_size)


def nnsight_harvest(model, reader, folder: Path, batch_size: int) -> int:
    """The same sites through nnsight, the non-padding rows saved as float16 .npy; tokens stored."""
    from nnsight import NNsight

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    wrapped = NNsight(model.hf)
    layers = wrapped.model.language_model.layers
    tokens = 0
    for k, batch in enumerate(batches_of(model, reader, batch_size)):
        inputs = dict(batch.inputs)
        # the positions mmlens's Model.forward gives a left-padded batch: the same activations
        inputs["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp_min(0)
        saved: list = []  # filled inside the trace (nnsight runs the block's code itself)
        with torch.no_grad(), wrapped.trace(**inputs):
            for layer in layers:
                saved.append(layer.output.save())
        real = inputs["attention_mask"].bool()
        for i, value in enumerate(saved):
            value = value[0] if isinstance(value, tuple) else value
            np.save(folder / f"batch{k:05d}.L{i}.npy", value[real].to(torch.float16).numpy())
        tokens += int(real.sum())
    return tokens


def same_values(store: Path, nn_folder: Path) -> float:
    """Largest |difference| between the store's first batch at lm.L0.resid and nnsight's: the same sites, the same tokens."""
    from mmlens.store import Store

    theirs = np.load(nn_folder / "batch00000.L0.npy").astype(np.float32)
    ours = Store.open(store).read("lm.L0.resid", np.arange(theirs.shape[0])).float().numpy()
    return float(np.abs(ours - theirs).max())


def reads(folder: Path, batch: int, count: int) -> dict:
    """Random-token batches from the store: one site, then every site; tokens/s and MB/s."""
    from mmlens.store import Store

    store = Store.open(folder)
    out = {}
    for label, sites in (("one_site", store.sites[:1]), ("all_sites", store.sites)):
        width = sum(store.width(s) for s in sites)
        next(store.batches(sites, batch, shuffle=True, seed=-1 % 2**32))  # maps opened, pages cached
        start, n, epoch, done = time.perf_counter(), 0, 0, 0
        while done < count:  # epochs of fresh shuffles until ``count`` batches
            for item in store.batches(sites, batch, shuffle=True, seed=epoch):
                n += item["index"].shape[0]
                done += 1
                if done == count:
                    break
            epoch += 1
        seconds = time.perf_counter() - start
        out[label] = {"sites": len(sites), "batch": batch, "batches": count, "tokens_per_s": round(n / seconds),
                      "mb_per_s": round(n * width * 2 / seconds / 1e6, 1)}
    return out


def disk(folder: Path, summary: dict, widths: list[int]) -> dict:
    arrays = sum(p.stat().st_size for p in folder.rglob("*.npy"))
    tables = sum(p.stat().st_size for p in folder.rglob("tokens.parquet"))
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    tokens = summary["tokens"]
    raw = sum(widths) * 2
    return {"tokens": tokens, "raw_bytes_per_token": raw, "array_bytes_per_token": round(arrays / tokens, 2),
            "table_bytes_per_token": round(tables / tokens, 2), "total_bytes_per_token": round(total / tokens, 2),
            "total_over_raw": round(total / tokens / raw, 4)}


def measure(name: str, args, work: Path) -> dict:
    from mmlens.data.readers import open_reader
    from mmlens.hooks import expand

    model = load_model(name, args.hidden, args.layers)
    reader = open_reader(f"shapes:test[0:{args.samples}]")
    sites = expand(model, "lm.L*.resid")
    store, nn_folder = work / f"{name}-store", work / f"{name}-nnsight"
    counts: dict[str, int] = {}

    def run_bare():
        counts["bare"] = bare(model, reader, args.batch_size)

    def run_mmlens():
        counts["mmlens"] = mmlens_harvest(model, reader, store, args.batch_size, args.shard_size)["tokens"]

    def run_nnsight():
        counts["nnsight"] = nnsight_harvest(model, reader, nn_folder, args.batch_size)

    functions = {"bare": run_bare, "mmlens": run_mmlens}
    if not args.skip_nnsight:
        functions["nnsight"] = run_nnsight
    seconds = median_seconds(functions, args.repeats, warmup=1)
    assert len(set(counts.values())) == 1, counts  # every path stored the same tokens
    tokens = counts["bare"]
    figures = {label: {"seconds": round(s, 3), "tokens_per_s": round(tokens / s, 1),
                       "vs_bare": round(seconds["bare"] / s, 3)} for label, s in seconds.items()}
    summary = mmlens_harvest(model, reader, store, args.batch_size, args.shard_size)
    if not args.skip_nnsight:
        figures["nnsight"]["max_abs_diff_L0_first_batch"] = same_values(store, nn_folder)
    widths = _widths(store, sites)
    return {"model": model.name, "sites": sites, "d": widths[0], "samples": args.samples, "tokens": tokens,
            "batch_size": args.batch_size, "shard_size": args.shard_size, "throughput": figures,
            "goal_met": figures["mmlens"]["vs_bare"] >= 0.85,
            "reads": reads(store, args.read_batch, args.reads), "disk": disk(store, summary, widths)}


def _widths(folder: Path, sites: list[str]) -> list[int]:
    from mmlens.store import Store

    store = Store.open(folder)
    return [store.width(s) for s in sites]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="shapes-llava,llava-geometry")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512, help="llava-geometry's decoder width")
    parser.add_argument("--layers", type=int, default=4, help="llava-geometry's decoder depth")
    parser.add_argument("--read-batch", type=int, default=1024)
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-nnsight", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            result = measure(name, args, Path(tmp))
            results.append(result)
            t = result["throughput"]
            print(f"{result['model']}: {result['tokens']} tokens, {len(result['sites'])} sites x d={result['d']}; "
                  + "; ".join(f"{k} {v['tokens_per_s']:,.0f} tok/s ({v['vs_bare']:.2f}x bare)" for k, v in t.items())
                  + f"; reads {result['reads']['all_sites']['tokens_per_s']:,} tok/s all sites; "
                  f"{result['disk']['total_bytes_per_token']} B/token vs raw {result['disk']['raw_bytes_per_token']}",
                  file=sys.stderr if args.json else sys.stdout, flush=True)
    emit({"threads": args.threads, "torch": torch.__version__, "results": results}, args.json)


if __name__ == "__main__":
    main()
