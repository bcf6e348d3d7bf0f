"""Which file format holds the activation store: write throughput, random-row reads, bytes on disk.

Writes ``--tokens`` rows of width ``--d`` (float16, random normal values: no
format gets an unfair compression win) as ``--shards`` shards in each format,
then reads ``--reads`` batches of ``--batch`` random rows (rows drawn across
every shard, as a shuffled training loop does) through each format's
memory-mapped or chunk-cached reader. Every figure is the median of
``--repeats`` runs, each in a fresh temporary folder; the page cache is warm
for reads (the case of a training loop that reads the store many times).

Formats: ``npy`` (``np.lib.format.open_memmap`` / ``np.load(mmap_mode="r")``),
``safetensors`` (``save_file`` / ``safe_open`` with ``get_slice`` per row, since
safetensors has no fancy indexing), ``arrow`` (Arrow IPC file of a
``FixedSizeList`` column, ``pa.memory_map``, a zero-copy numpy view of the values)
and ``zarr`` (v3, zstd level 3, chunks of 4096 rows; skipped if zarr is missing).

Example:
    python benchmarks/store_formats.py --tokens 200000 --d 512 --json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---- writers: (folder, shards) -> None; readers: folder -> callable(rows) -> array ----
def write_npy(folder: Path, shards: list[np.ndarray]) -> None:
    for i, shard in enumerate(shards):
        np.save(folder / f"{i}.npy", shard)


def open_npy(folder: Path, n: int) -> Callable[[int, np.ndarray], np.ndarray]:
    # np.asarray: a plain ndarray view of the map; indexing the np.memmap subclass is ~5x slower
    maps = [np.asarray(np.load(folder / f"{i}.npy", mmap_mode="r")) for i in range(n)]
    return lambda shard, rows: maps[shard][rows]


def write_safetensors(folder: Path, shards: list[np.ndarray]) -> None:
    from safetensors.numpy import save_file

    for i, shard in enumerate(shards):
        save_file({"x": shard}, str(folder / f"{i}.safetensors"))


def open_safetensors(folder: Path, n: int) -> Callable[[int, np.ndarray], np.ndarray]:
    from safetensors import safe_open

    handles = [safe_open(str(folder / f"{i}.safetensors"), "np") for i in range(n)]
    slices = [h.get_slice("x") for h in handles]
    return lambda shard, rows: np.stack([slices[shard][int(r):int(r) + 1][0] for r in rows])


def write_arrow(folder: Path, shards: list[np.ndarray]) -> None:
    import pyarrow as pa

    for i, shard in enumerate(shards):
        flat = np.ascontiguousarray(shard).reshape(-1)
        # from the buffer: pa.array() on float16 goes through Python objects, ~30x slower
        values = pa.Array.from_buffers(pa.from_numpy_dtype(flat.dtype), flat.size, [None, pa.py_buffer(flat)])
        column = pa.FixedSizeListArray.from_arrays(values, shard.shape[1])
        table = pa.table({"x": column})
        with pa.OSFile(str(folder / f"{i}.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)


def open_arrow(folder: Path, n: int) -> Callable[[int, np.ndarray], np.ndarray]:
    import pyarrow as pa

    views = []
    for i in range(n):
        table = pa.ipc.open_file(pa.memory_map(str(folder / f"{i}.arrow"))).read_all()
        column = table.column("x").combine_chunks()
        d = column.type.list_size
        views.append(column.values.to_numpy(zero_copy_only=True).reshape(-1, d))
    return lambda shard, rows: views[shard][rows]


def write_zarr(folder: Path, shards: list[np.ndarray]) -> None:
    import zarr
    from zarr.codecs import ZstdCodec

    for i, shard in enumerate(shards):
        array = zarr.create_array(str(folder / f"{i}.zarr"), shape=shard.shape, dtype=shard.dtype,
                                  chunks=(4096, shard.shape[1]), compressors=ZstdCodec(level=3))
        array[:] = shard


def open_zarr(folder: Path, n: int) -> Callable[[int, np.ndarray], np.ndarray]:
    import zarr

    arrays = [zarr.open_array(str(folder / f"{i}.zarr"), mode="r") for i in range(n)]
    return lambda shard, rows: arrays[shard].get_orthogonal_selection((rows, slice(None)))


FORMATS = {"npy": (write_npy, open_npy), "safetensors": (write_safetensors, open_safetensors),
           "arrow": (write_arrow, open_arrow), "zarr": (write_zarr, open_zarr)}


def measure(name: str, shards: list[np.ndarray], reads: int, batch: int, seed: int) -> dict[str, float]:
    """One run of one format: MB/s written, rows/s read at random, bytes on disk per byte of raw data."""
    write, open_ = FORMATS[name]
    raw = sum(s.nbytes for s in shards)
    folder = Path(tempfile.mkdtemp(prefix=f"store-{name}-"))
    try:
        start = time.perf_counter()
        write(folder, shards)
        written = time.perf_counter() - start
        size = _folder_bytes(folder)
        read = open_(folder, len(shards))
        rng = np.random.default_rng(seed)
        rows_per_shard = shards[0].shape[0]
        start = time.perf_counter()
        for _ in range(reads):
            picks = rng.integers(0, rows_per_shard * len(shards), batch)
            order = np.argsort(picks // rows_per_shard, kind="stable")  # group rows by shard, as the store does
            picks = picks[order]
            for shard in np.unique(picks // rows_per_shard):
                rows = np.sort(picks[picks // rows_per_shard == shard] % rows_per_shard)
                out = read(int(shard), rows)
                assert out.shape == (rows.size, shards[0].shape[1])
        reading = time.perf_counter() - start
        return {"write_MBps": raw / written / 1e6, "read_rows_per_s": reads * batch / reading,
                "bytes_per_raw_byte": size / raw}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    per_shard = args.tokens // args.shards
    shards = [rng.standard_normal((per_shard, args.d), dtype=np.float32).astype(np.float16) for _ in range(args.shards)]
    figures: dict[str, dict[str, float]] = {}
    for name in args.formats.split(","):
        try:
            runs = [measure(name, shards, args.reads, args.batch, seed) for seed in range(args.repeats)]
        except ImportError as error:
            print(f"{name}: skipped ({error})")
            continue
        figures[name] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        f = figures[name]
        print(f"{name:12s} write {f['write_MBps']:8.0f} MB/s   random read {f['read_rows_per_s']:12,.0f} rows/s   "
              f"disk {f['bytes_per_raw_byte']:.3f} x raw")
    emit({"tokens": per_shard * args.shards, "d": args.d, "dtype": "float16", "batch": args.batch,
          "formats": figures}, args.json)


if __name__ == "__main__":
    main()
