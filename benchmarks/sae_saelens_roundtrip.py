"""SAELens files both ways, checked against SAELens' own loader and saver.

Runs in an environment that has ``sae-lens`` (kept apart from mmlens' own:
SAELens pins its own transformers) with mmlens importable::

    python3 -m venv /work/venv-saelens
    /work/venv-saelens/bin/pip install torch==2.13.0   # the CPU build
    echo "torch==2.13.0" > constraints.txt && /work/venv-saelens/bin/pip install -c constraints.txt sae-lens
    PYTHONPATH=src /work/venv-saelens/bin/python benchmarks/sae_saelens_roundtrip.py --write-fixtures

1. ``export``: mmlens saves an SAE of each architecture (random weights, fixed
   seed; BatchTopK goes out as ``jumprelu``); SAELens' ``SAE.load_from_disk``
   loads it and encodes a fixed input; both encodings and reconstructions are
   compared.
2. ``import``: SAELens saves small SAEs of each architecture it has
   (``standard``, ``topk``, ``jumprelu``, and two with run-time options mmlens
   folds into the weights: ``standard`` with ``apply_b_dec_to_input=false``,
   ``topk`` with ``rescale_acts_by_decoder_norm`` and non-unit decoder rows),
   with its encodings and reconstructions of the fixed input; mmlens loads them
   and compares. ``--write-fixtures`` writes these folders to
   ``tests/fixtures/saelens/`` (``cfg.json``, ``sae_weights.safetensors``,
   ``expected.safetensors`` with ``x``, ``acts``, ``recon``), which
   ``tests/sae/test_saelens.py`` checks without sae-lens.

Prints the largest difference per case, absolute, divided by the reference's
largest magnitude where that is over 1 (float32 folding reorders sums, so a
tolerance scales with the values); exits 1 if any is over ``--tol``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from mmlens.sae.model import SparseAutoencoder
from mmlens.sae.saelens import load_saelens, save_saelens

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "saelens"
D_IN, D_SAE, K, ROWS = 8, 32, 4, 16


def fixed_input(seed: int = 0) -> torch.Tensor:
    """The input every case encodes: ``ROWS x D_IN`` normal values from ``seed``."""
    return torch.randn(ROWS, D_IN, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int, unit_decoder: bool = True) -> None:
    """Every tensor random (biases too, so none hides behind a zero); thresholds positive."""
    rng = torch.Generator().manual_seed(seed)
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            value = torch.randn(tensor.shape, generator=rng) * (0.5 if name.startswith("b_") else 1.0)
            if name == "threshold":
                value = value.abs() * 0.5
            tensor.copy_(value)
    if unit_decoder:
        module.W_dec.div_(module.W_dec.norm(dim=-1, keepdim=True))


def check_export(x: torch.Tensor) -> list[dict]:
    """mmlens saves, SAELens loads: the encodings and reconstructions of both."""
    from sae_lens import SAE

    rows = []
    for seed, architecture in enumerate(("standard", "topk", "batchtopk", "jumprelu")):
        ours = SparseAutoencoder(D_IN, D_SAE, architecture, k=K, site="lm.L2.resid")
        randomize(ours, 100 + seed)
        if architecture == "batchtopk":
            ours.threshold.fill_(0.3)  # one learned global threshold, as training leaves it
        with tempfile.TemporaryDirectory() as folder:
            save_saelens(ours, folder)
            theirs = SAE.load_from_disk(folder)
            with torch.no_grad():
                acts_ours, acts_theirs = ours.encode(x), theirs.encode(x)
                recon_ours, recon_theirs = ours(x), theirs(x)
        rows.append({"direction": "export", "case": architecture, "saelens_class": type(theirs).__name__,
                     "acts_max_diff": _diff(acts_ours, acts_theirs), "recon_max_diff": _diff(recon_ours, recon_theirs),
                     "l0": float((acts_ours > 0).sum(-1).float().mean())})
    return rows


def saelens_cases() -> dict[str, object]:
    """The SAEs SAELens saves for the import direction, by fixture name."""
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    cases = {
        "standard": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "topk": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K)),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "standard_no_b_dec_in": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)),
        "topk_rescaled": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, rescale_acts_by_decoder_norm=True)),
    }
    for seed, (name, sae) in enumerate(cases.items()):
        randomize(sae, 200 + seed, unit_decoder=name != "topk_rescaled")
        sae.cfg.metadata.hook_name = "blocks.2.hook_resid_post"
        sae.cfg.metadata.model_name = "fixture"
    return cases


def check_import(x: torch.Tensor, out: Path) -> list[dict]:
    """SAELens saves (into ``out``), mmlens loads: the encodings and reconstructions of both."""
    rows = []
    for name, theirs in saelens_cases().items():
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        theirs.save_model(folder)
        with torch.no_grad():
            acts, recon = theirs.encode(x), theirs(x)
        save_file({"x": x.contiguous(), "acts": acts.contiguous(), "recon": recon.contiguous()},
                  str(folder / "expected.safetensors"))
        ours = load_saelens(folder)
        with torch.no_grad():
            rows.append({"direction": "import", "case": name, "mmlens_architecture": ours.architecture,
                         "acts_max_diff": _diff(ours.encode(x), acts), "recon_max_diff": _diff(ours(x), recon),
                         "l0": float((acts > 0).sum(-1).float().mean())})
    return rows


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, relative to the reference's largest magnitude when that is over 1."""
    scale = max(1.0, float(b.detach().float().abs().max()))
    return float((a.detach().float() - b.detach().float()).abs().max()) / scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write-fixtures", action="store_true", help=f"write the import cases to {FIXTURES}")
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object of the figures")
    args = parser.parse_args(argv)
    try:
        import sae_lens
    except ImportError:
        print("this script needs sae-lens: run it in the environment the docstring builds", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    x = fixed_input()
    with tempfile.TemporaryDirectory() as scratch:
        out = FIXTURES if args.write_fixtures else Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        rows = check_export(x) + check_import(x, out)
    print(f"sae-lens {sae_lens.__version__}, torch {torch.__version__}; d_in {D_IN}, d_sae {D_SAE}, k {K}, "
          f"{ROWS} input rows")
    print(f"{'direction':<9} {'case':<22} {'acts diff':>16} {'recon diff':>17} {'L0':>6}  class")
    for row in rows:
        kind = row.get("saelens_class") or row.get("mmlens_architecture")
        print(f"{row['direction']:<9} {row['case']:<22} {row['acts_max_diff']:>16.3g} "
              f"{row['recon_max_diff']:>17.3g} {row['l0']:>6.2f}  {kind}")
    worst = max(max(row["acts_max_diff"], row["recon_max_diff"]) for row in rows)
    print(f"largest difference {worst:.3g} (tolerance {args.tol:g})")
    if args.json:
        print(json.dumps({"saelens_version": sae_lens.__version__, "rows": rows, "worst": worst}))
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
