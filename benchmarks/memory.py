"""Peak memory and time per method on real-sized inputs, relative to a bare forward + backward.

    python benchmarks/memory.py [--tokens 600,3000] [--json]                 # CPU default, random weights
    python benchmarks/memory.py --preset llava-1.5-7b --captum-tokens all --json   # LLaVA-1.5-7B's config, bf16, cuda
    python benchmarks/memory.py --preset llava-1.5-7b --device cpu --layers 2 --tokens 600 \\
        --methods gradient_x_input,attention                                 # smoke test of the GPU path
    python benchmarks/memory.py --preset qwen2-vl-small --tokens 3000 --methods every --json   # every method

Models are built from configs in code with random weights (``presets.py``;
timings and memory do not depend on the weights): by default LLaVA-1.5's image
geometry (CLIP ViT at 336 px with 14 px patches: 576 image tokens) and a small
LLaMA decoder on the CPU; ``--preset llava-1.5-7b`` is the exact LLaVA-1.5-7B
config (CLIP ViT-L/14-336, 32 x 4096 LLaMA, vocab 32064), built directly on
the device in bf16. LLaVA-1.5's ~3,000-token runs add a long text prompt to
the image; the LLaVA-NeXT (anyres tiles) and Qwen2-VL (native resolution)
presets take a larger image instead.

Each method runs in a fresh subprocess. Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the growth of the
process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``
after the model is built; ``ru_maxrss`` where that is unavailable) over its
resident set before the run. "Bare" is one forward + backward of the same
model and sequence to the input embeddings (logits at the answer position
only, as mmlens computes them), run once as a warm-up in every process first.
Captum's ``LayerIntegratedGradients`` (32 steps, on the token
embedding, logits at the last position only) runs side by side at its default ``internal_batch_size`` (all steps
in one batch) and at 8, by default at the first length only (``--captum-tokens all``
for every length). Goals from issue 13 are printed next to the ratios.
With --json the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402
from presets import add_model_options, build, default_device, prepare  # noqa: E402

METHODS = ["gradient_x_input", "integrated_gradients", "attention", "rollout", "relevancy", "occlusion",
           "knockout", "trace"]
CAPTUM = ["captum_lig_default", "captum_lig_8"]
STEPS = 32
# Issue 13's goals: (peak memory over bare, time over the method's floor in bare runs, floor in bare runs).
GOALS = {
    "integrated_gradients": ("<= 2.0x", f"<= 1.15x of {STEPS} bare"),
    "trace": ("<= 2.0x", ""),
    "knockout": ("<= 2.0x", ""),
    "attention": ("<= 1.5x", ""),
    "rollout": ("<= 1.5x", ""),
    "relevancy": ("<= 1.5x", ""),
}
GPU_GOALS = {
    "gradient_x_input": "time <= 1.2x bare",
    "integrated_gradients": f"time <= 1.3x of {STEPS + 2} bare",
}


# ---- one measurement, in a fresh process ------------------------------------------
def runner(name: str, model, batch, targets, budget):
    """A function that runs ``name`` once."""
    from mmlens.attribution.api import METHODS as ATTRIBUTIONS
    from mmlens.causal import trace
    from mmlens.layout import Modality
    from mmlens.lens import knockout

    def with_budget(function, **options):
        if budget is not None and "memory_budget" in inspect.signature(function).parameters:
            options["memory_budget"] = budget
        return options

    if name == "bare":
        return lambda: bare(model, batch, targets)
    if name in ATTRIBUTIONS:
        function = ATTRIBUTIONS[name]
        options = {"integrated_gradients": {"steps": STEPS}, "occlusion": {"window": 4}}.get(name, {})
        options = with_budget(function, **options)
        return lambda: function(model, targets, **options)
    image = batch.layout.mask(Modality.IMAGE)
    last = torch.zeros_like(image)
    last[:, -1] = True
    groups = {"image": image, "text": batch.layout.mask(Modality.TEXT) & ~last, "last": last}
    answer = targets.tokens[:, 0]
    if name == "knockout":
        options = with_budget(knockout, window=1, answer=answer)
        return lambda: knockout(model, batch, groups, **options)
    if name == "trace":
        options = with_budget(trace, answer=answer, components=("resid",))
        return lambda: trace(model, batch, groups, **options)
    if name.startswith("captum_lig"):
        return captum_lig(model, batch, answer, None if name == "captum_lig_default" else 8)
    raise SystemExit(f"unknown method {name}")


def bare(model, batch, targets) -> None:
    """One forward + backward of the whole model (vision tower included) to the input embeddings."""
    from mmlens.hooks import attach_output

    embed = model.hf.get_input_embeddings()
    seen = []

    def leaf(output):
        output = output.detach().requires_grad_()
        seen.append(output)
        return output

    with attach_output(embed, leaf):
        logits = model.hf(**targets.batch.inputs, use_cache=False, logits_to_keep=1).logits
    score = logits[:, -1].float().gather(-1, targets.tokens[:, :1].to(logits.device)).sum()
    torch.autograd.grad(score, seen[0])


def captum_lig(model, batch, answer, internal_batch_size):
    from captum.attr import LayerIntegratedGradients

    inputs = {k: v for k, v in batch.inputs.items() if k != "input_ids"}
    ids = batch.inputs["input_ids"]
    image_id = model.hf.config.image_token_id
    pad = model.tokenizer.pad_token_id or 0
    baseline = torch.where(ids == image_id, ids, torch.full_like(ids, pad))  # image tokens must stay image tokens

    def forward(input_ids):
        rows = input_ids.shape[0]
        extra = {k: (v.repeat(rows // v.shape[0], *[1] * (v.ndim - 1)) if isinstance(v, torch.Tensor) and v.ndim
                     and v.shape[0] == ids.shape[0] else v) for k, v in inputs.items()}
        logits = model.hf(input_ids=input_ids, **extra, use_cache=False, logits_to_keep=1).logits[:, -1].float()
        return logits.gather(-1, answer.to(logits.device).repeat(rows // answer.shape[0])[:, None])[:, 0]

    lig = LayerIntegratedGradients(forward, model.hf.get_input_embeddings())
    return lambda: lig.attribute(ids, baselines=baseline, n_steps=STEPS, internal_batch_size=internal_batch_size)


def _peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def setup(args, tokens: int):
    """The model, a prepared prompt of about ``tokens`` tokens and its one-token answer targets."""
    from mmlens.readout import build_targets

    torch.set_num_threads(args.threads)
    model = build(args.preset, args.device, args.layers, args.hidden, getattr(torch, args.dtype))
    batch = prepare(model, tokens)
    return model, batch, build_targets(model, batch, max_new_tokens=1)


def run_measuring_peak(function, cuda: bool) -> tuple[object, float, int]:
    """Run ``function`` once: its result, seconds, and peak memory over what was held before.

    On a GPU ``torch.cuda.max_memory_allocated`` (exact); on the CPU the growth
    of the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``;
    ``ru_maxrss`` where that is unavailable) over the resident set before.
    """
    import gc

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        reset = _peak_reset()
        before = _rss_bytes("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    result = function()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() - before
    else:
        high = _rss_bytes("VmHWM") if reset else None
        peak = (high if high is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - before
    return result, seconds, int(max(peak, 0))


def measure_one(name: str, model, batch, targets, args) -> dict:
    """Run ``name`` after the model's warm-up; its time (the fastest of ``--repeats``) and peak memory."""
    function = runner(name, model, batch, targets, args.memory_budget)
    cuda = args.device.startswith("cuda")
    _, seconds, peak = run_measuring_peak(function, cuda)
    for _ in range(getattr(args, "repeats", 1) - 1):  # the fastest of a few runs: one GPU run is noisy at 0.1 s
        seconds = min(seconds, run_measuring_peak(function, cuda)[1])
    return {"method": name, "tokens": int(batch.input_ids.shape[1]), "peak_bytes": peak,
            "seconds": seconds, "model_bytes": sum(p.numel() * p.element_size() for p in model.hf.parameters())}


def measure(args) -> dict:
    """Build, prepare, warm up with one bare run, then run one method once and measure it (a child process)."""
    model, batch, targets = setup(args, args.tokens)
    bare(model, batch, targets)  # warm-up: one-time costs (kernels, allocator) are paid before the measurement
    return measure_one(args.child, model, batch, targets, args)


def in_process(args, names: list[str], tokens: int) -> list[dict]:
    """Every method at one length in this process, one model (``--in-process``; exact on a GPU, whose
    ``max_memory_allocated`` is reset before each run, but not on the CPU, whose peak resident set is not)."""
    from mmlens.errors import MmlensError

    model, batch, targets = setup(args, tokens)
    bare(model, batch, targets)
    results = []
    for name in names:
        try:
            results.append(measure_one(name, model, batch, targets, args))
        except (torch.OutOfMemoryError, MmlensError) as error:  # one method's failure is a result, not the end
            results.append({"method": name, "tokens": tokens, "error": str(error)[:200]})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # progress, and what a cut-off run keeps
    del model, batch, targets
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return results


def child(args, name: str, tokens: int) -> dict:
    command = [sys.executable, __file__, "--child", name, "--tokens", str(tokens), "--preset", args.preset,
               "--device", args.device, "--dtype", args.dtype, "--hidden", str(args.hidden),
               "--threads", str(args.threads)]
    if args.layers is not None:
        command += ["--layers", str(args.layers)]
    if args.memory_budget is not None:
        command += ["--memory-budget", args.memory_budget]
    return run_child(command, {"method": name, "tokens": tokens})


def run_child(command: list[str], failed: dict) -> dict:
    """Run a measuring child process: the JSON of its last line, or ``failed`` with its last error line."""
    # Large blocks straight from and back to the OS: glibc's default raises its mmap threshold after frees, so
    # memory freed by the warm-up would otherwise stay resident and hide the next run's peak from VmHWM.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return {**failed, "error": tail[0][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--tokens", default="600,3000", help="approximate sequence lengths")
    parser.add_argument("--methods", default=",".join(METHODS + CAPTUM),
                        help="comma-separated; 'every' is every attribution method, knockout and tracing")
    parser.add_argument("--captum-tokens", default="first",
                        help="lengths at which Captum runs: first (default), all, or a list (on the CPU the slow part)")
    parser.add_argument("--memory-budget", default=None, help="passed to methods that take memory_budget")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--in-process", action="store_true",
                        help="every method in one process per length (GPU: exact peaks, no model rebuild per method)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per method with --in-process; the fastest counts")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.repeats = args.repeats if args.in_process else 1
    args.device = args.device or default_device(args.preset)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.child:
        args.tokens = int(args.tokens)
        print(json.dumps(measure(args)))
        return
    from rich.console import Console
    from rich.table import Table

    names = [m for m in args.methods.split(",") if m]
    if names == ["every"]:
        from mmlens.attribution.api import METHODS as ATTRIBUTIONS

        names = [*ATTRIBUTIONS, "knockout", "trace"]
    lengths = [int(t) for t in args.tokens.split(",")]
    captum_tokens = {"all": lengths, "first": lengths[:1]}.get(args.captum_tokens) or [
        int(t) for t in args.captum_tokens.split(",")]
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    figures = {"preset": args.preset, "device": args.device, "card": card, "dtype": args.dtype,
                         "layers": args.layers, "threads": args.threads, "steps": STEPS, "runs": []}
    for tokens in lengths:
        chosen = ["bare"] + [name for name in names if name not in CAPTUM or tokens in captum_tokens]
        if args.in_process:
            results = in_process(args, chosen, tokens)
        else:
            results = []
            for name in chosen:
                results.append(child(args, name, tokens))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        base = results[0]
        figures["runs"].append(base)
        for result in results[1:]:
            name = result["method"]
            if "error" not in result and "error" not in base:
                result["peak_ratio"] = result["peak_bytes"] / max(1, base["peak_bytes"])
                result["time_ratio"] = result["seconds"] / base["seconds"]
                floor = {"integrated_gradients": STEPS}.get(name, 1)
                result["time_over_floor"] = result["seconds"] / (floor * base["seconds"])
            figures["runs"].append(result)
    table = Table("tokens", "method", "peak", "x bare", "goal", "time s", "x bare", "x floor", "goal",
                  title=f"Memory and time over a bare forward + backward, {args.preset} on {card} ({args.dtype})")
    for result in figures["runs"]:
        if "error" in result:
            table.add_row(str(result["tokens"]), result["method"], "error", "", "", result["error"], "", "", "")
            continue
        if result["method"] == "bare":
            table.add_row(str(result["tokens"]), "bare", _mb(result["peak_bytes"]), "1.00", "",
                          f"{result['seconds']:.2f}", "1.0", "", "")
            continue
        memory_goal, time_goal = GOALS.get(result["method"], ("", ""))
        if args.device.startswith("cuda"):
            time_goal = GPU_GOALS.get(result["method"], time_goal)
            memory_goal = (memory_goal + ", " if memory_goal else "") + "< 40 GB"
        table.add_row(str(result["tokens"]), result["method"], _mb(result["peak_bytes"]),
                      f"{result.get('peak_ratio', float('nan')):.2f}", memory_goal, f"{result['seconds']:.2f}",
                      f"{result.get('time_ratio', float('nan')):.1f}",
                      f"{result.get('time_over_floor', float('nan')):.2f}", time_goal)
    Console(width=160).print(table)
    emit(figures, args.json)


def _mb(value: int) -> str:
    return f"{value / 2**30:.2f} GB" if value >= 2**30 else f"{value / 2**20:.0f} MB"


if __name__ == "__main__":
    main()
