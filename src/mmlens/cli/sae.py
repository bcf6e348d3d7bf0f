"""``mmlens sae``: train, evaluate, show and use sparse autoencoders on an activation store.

``mmlens sae train`` trains on one site of a store (``docs/sae.md``) into
``--out``: the SAE in SAELens' layout (``cfg.json``, ``sae_weights.safetensors``),
``training.json`` and a ``checkpoint/`` that a killed run resumes from (the same
command again). ``mmlens sae eval`` reports FVU, L0, dead and dense latents and
the loss recovered at the answer position, per modality.

Other sub-commands live in their own modules (``cli/sae_dashboard.py``,
``cli/sae_filter.py``, listed in :data:`PLUGINS`): each is registered here when
present, through its ``register(app)`` or else its command function.

Example:
    mmlens sae train --store store/ --site lm.L2.resid --arch topk --k 32 --expansion 8 --steps 2000 --out sae/
    mmlens sae eval --model shapes-llava --store store/ --sae sae/ --json
"""

from __future__ import annotations

import math
import shutil
from importlib import import_module
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from mmlens.cli.options import JsonOption, ModelOption, OverwriteOption, print_json, stdout_for_json
from mmlens.cli.terminal import progress_bar, progress_console, result_console
from mmlens.errors import MmlensError
from mmlens.report.output import OutputFolder

app = typer.Typer(name="sae", help="Sparse autoencoders: train, eval, dashboard (a page per latent), "
                  "filter (data selection by SAE-V).", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
#: Sibling modules that add sub-commands: module -> (command name, the function it exposes when it has no register(app)).
PLUGINS = {"sae_dashboard": ("dashboard", "dashboard"), "sae_filter": ("filter", "sae_filter")}
SaeOutOption = typer.Option(..., "--out", "-o", help="Folder for the SAE; the same command again resumes a "
                            "killed run there.")


@app.command("train")
def train(
    store: Path = typer.Option(..., "--store", help="Activation store (mmlens harvest)."),
    site: str = typer.Option(..., "--site", "-s", help="Site of the store to train on, e.g. lm.L2.resid."),
    arch: str = typer.Option("topk", "--arch", help="standard (ReLU + L1), topk or batchtopk (saved as jumprelu)."),
    k: int = typer.Option(32, "--k", help="Latents per token (topk; batchtopk: on average)."),
    expansion: int = typer.Option(8, "--expansion", help="Latents per input dimension."),
    steps: int = typer.Option(2000, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(4096, "--batch-size", help="Tokens per step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 2e-4 / sqrt(latents / 2^14))."),
    l1: float = typer.Option(1.0, "--l1", help="L1 coefficient of the standard architecture."),
    modality: str = typer.Option("all", "--modality", help="Tokens to train on: image, text, special or all."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation and of the batch order."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Steps between checkpoints."),
    device: Optional[str] = typer.Option(None, "--device", help="Where to train, e.g. cuda or cpu (default: a GPU "
                                         "when there is one); a killed run may resume on another device."),
    out: Path = SaeOutOption,
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Train a sparse autoencoder on one site of an activation store; a killed run resumes when run again."""
    from mmlens.sae.activations import SiteActivations
    from mmlens.sae.train import TrainConfig, train_sae
    from mmlens.store import Store

    config = TrainConfig(architecture=arch, k=k, expansion=expansion, steps=steps, batch_size=batch_size, lr=lr,
                         l1_coefficient=l1, modality=modality, seed=seed, checkpoint_every=checkpoint_every)
    config.check()
    device = _device(device)
    opened = Store.open(store)
    width = opened.width(site)
    if arch in ("topk", "batchtopk") and k > config.d_sae_for(width):  # before any row is read
        raise MmlensError(f"k={k} is larger than the number of latents ({config.d_sae_for(width)} = "
                          f"{expansion} x {width})")
    acts = SiteActivations(opened, site, modality)
    parameters = {"store": str(Path(store).resolve()), "site": site, **{key: value for key, value in
                  vars(config).items() if key not in ("checkpoint_every", "log_every")}}
    folder = OutputFolder(out, "sae train", parameters, overwrite=overwrite, resumable=True, result="sae")
    console = progress_console()
    with stdout_for_json(as_json), folder:
        if not folder.resumed:  # --overwrite of another run: its checkpoint must not be picked up
            for stale in ("checkpoint", ".checkpoint-old", ".checkpoint-tmp"):
                shutil.rmtree(folder.path / stale, ignore_errors=True)
        with _bar(console, "train", steps) as bar:
            sae = train_sae(acts, config, folder.path, progress=bar, device=device)
    summary = {"out": str(folder.out), "site": site, "architecture": arch, "d_in": sae.d_in, "d_sae": sae.d_sae,
               "k": sae.k, "steps": steps, "rows": len(acts), "last": (_history(folder.out) or [{}])[-1]}
    if as_json:
        print_json(summary)
    else:
        result_console().print(f"SAE ({arch}, {sae.d_sae} latents) written to {escape(str(folder.out))}/; "
                               f"last batch: {last_batch(summary['last'])}", highlight=False)


def last_batch(metrics: dict[str, Any]) -> str:
    """The last logged batch of training in words.

    Example:
        >>> last_batch({"step": 200, "loss": 0.1973, "fvu": 0.1973, "aux": 0.0, "l0": 8.0, "dead": 0.0, "lr": 2e-05})
        'step 200, loss 0.197, FVU 0.197, L0 8.0, dead 0%, lr 2e-05'
    """
    if not metrics:
        return "none logged"
    parts = {"step": lambda v: f"step {v}", "loss": lambda v: f"loss {v:.3g}", "fvu": lambda v: f"FVU {v:.3g}",
             "l0": lambda v: f"L0 {v:.1f}", "dead": lambda v: f"dead {v:.0%}", "lr": lambda v: f"lr {v:.2g}"}
    return ", ".join(show(metrics[key]) for key, show in parts.items() if key in metrics)


def _device(name: str | None) -> str | None:
    """``name`` checked before any work: one line for a device torch does not know or this machine lacks."""
    if name is None:
        return None
    import torch

    try:
        torch.empty(0, device=name)
    except (RuntimeError, AssertionError) as error:
        raise MmlensError(f"cannot train on device {name!r}: {str(error).splitlines()[0]}") from None
    return name


@app.command("eval")
def evaluate(
    sae_folder: Path = typer.Option(..., "--sae", help="SAE folder (mmlens sae train, or a SAELens folder)."),
    store: Path = typer.Option(..., "--store", help="Activation store to measure FVU, L0, dead and dense latents on."),
    model: Optional[str] = ModelOption,
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Answered samples for the loss recovered "
                                       "(default: the store's own world data, e.g. shapes:test[0:400])."),
    samples: int = typer.Option(200, "--samples", "-n", help="At most this many samples for the loss recovered "
                                "(0: skip it and load no model)."),
    site: Optional[str] = typer.Option(None, "--site", "-s", help="Site (default: the one the SAE was trained on)."),
    dense: float = typer.Option(0.1, "--dense", help="A latent firing on more than this share of tokens is dense."),
    as_json: bool = JsonOption,
) -> None:
    """FVU, L0, dead and dense latents, and loss recovered at the answer, per modality (image, text, all)."""
    from mmlens.sae.activations import SiteActivations
    from mmlens.sae.evaluate import check_width, loss_recovered, reconstruction
    from mmlens.sae.files import load_sae

    sae = load_sae(sae_folder)
    site = site or sae.site
    if not site:
        raise MmlensError(f"{sae_folder} does not say its site; give --site")
    acts = SiteActivations(store, site)
    check_width(sae, acts.width, f"the store's site {site}")
    console = progress_console()
    with stdout_for_json(as_json):
        result: dict[str, Any] = {"sae": str(sae_folder), "store": str(store), "site": site,
                                  "reconstruction": reconstruction(sae, acts, dense=dense)}
        if samples > 0:
            from mmlens.cli.samples import load_model
            from mmlens.data.readers import open_reader

            spec = data or _store_data(acts.store)
            reader = open_reader(spec)
            chosen = [sample for _, sample in reader.read(0, min(samples, len(reader)))]
            loaded = load_model(console, model or acts.store.model)
            with _bar(console, "loss recovered", len(chosen)) as bar:
                result["loss_recovered"] = loss_recovered(loaded, sae, chosen, site, progress=bar)
            result.update(model=loaded.name, data=spec)
        for warning in _undefined(result):
            console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
        result_console().print(eval_table(result))
    if as_json:
        print_json(result)  # an undefined loss recovered (NaN) prints as null


def _store_data(store) -> str:
    """``world:split[a:b]`` of the store's first world source; one line when it has none."""
    for source in store.manifest.get("sources", []):
        reader = source.get("reader", {})
        if reader.get("reader") == "world":
            return f"{reader['world']}:{reader['split']}[{reader['start']}:{reader['stop']}]"
    raise MmlensError("the store was not harvested from a world: give --data with answered samples, or --samples 0")


def _history(out: Path) -> list[dict[str, Any]]:
    import json

    path = out / "training.json"
    return json.loads(path.read_text()).get("history", []) if path.is_file() else []


def eval_table(result: dict[str, Any]) -> Table:
    """One row per modality; an undefined loss recovered (zero ablation changes nothing) shows as "—"."""
    table = Table(title=f"SAE at {result['site']}", caption="recovered: loss recovered at the answer, "
                  "(zero - SAE) / (zero - clean)")
    table.add_column("tokens")
    for column in ("count", "FVU", "L0", "dead", "dense", "recovered"):
        table.add_column(column, justify="right")
    table.add_column("clean/SAE/zero loss", justify="right", no_wrap=True)
    for name, stats in result["reconstruction"].items():
        lr = result.get("loss_recovered", {}).get(name)
        losses = f"{lr['clean_loss']:.3f}/{lr['sae_loss']:.3f}/{lr['zero_loss']:.3f}" if lr else "—"
        recovered = "—" if not lr or not math.isfinite(lr["recovered"]) else f"{lr['recovered']:.3f}"
        table.add_row(name, str(stats["tokens"]), f"{stats['fvu']:.4f}", f"{stats['l0']:.1f}", str(stats["dead"]),
                      str(stats["dense"]), recovered, losses)
    return table


def _undefined(result: dict[str, Any]) -> list[str]:
    """One warning per modality whose loss recovered is undefined."""
    from mmlens.sae.evaluate import undefined_recovery

    found = (undefined_recovery(name, lr) for name, lr in result.get("loss_recovered", {}).items())
    return [line for line in found if line is not None]


class _bar:
    """A progress bar; called with ``(step, metrics)`` (training) or ``(count,)`` (samples done)."""

    def __init__(self, console: Console, label: str, total: int) -> None:
        self.progress = progress_bar(console, TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn())
        self.label, self.total = label, total

    def __enter__(self) -> "_bar":
        self.progress.__enter__()
        self.task = self.progress.add_task(self.label, total=self.total, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, done: int, metrics: dict[str, float] | None = None) -> None:
        if metrics is None:
            self.progress.update(self.task, advance=done)
            return
        info = f"FVU {metrics.get('fvu', float('nan')):.3f}  L0 {metrics.get('l0', 0):.1f}"
        self.progress.update(self.task, completed=done, info=info)


def _register_plugins() -> None:
    for name, (command, function) in PLUGINS.items():
        try:
            module = import_module(f"mmlens.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"mmlens.cli.{name}":  # a plugin that is there but broken must say so
                raise
            continue
        if hasattr(module, "register"):
            module.register(app)
        elif hasattr(module, function):
            app.command(command)(getattr(module, function))


_register_plugins()
