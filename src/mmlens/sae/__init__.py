"""Sparse autoencoders over a store's activations (issue 16).

- :mod:`mmlens.sae.model`: :class:`SparseAutoencoder` (standard, TopK, BatchTopK, JumpReLU);
- :mod:`mmlens.sae.activations`: shuffled batches of one site from a store, with the row table;
- :mod:`mmlens.sae.train`: training with AuxK, warm-up and decay, checkpoints that resume;
- :mod:`mmlens.sae.evaluate`: FVU, L0, dead and dense latents and loss recovered, per modality;
- :mod:`mmlens.sae.files`: ``save_sae`` / ``load_sae`` (SAELens' layout, through :mod:`mmlens.sae.saelens`);
- :mod:`mmlens.sae.checkpoint`: training checkpoints, swapped in atomically.

Example:
    >>> from mmlens.sae import SparseAutoencoder
    >>> SparseAutoencoder(16, 128, "topk", k=8).d_sae
    128
"""

from mmlens.sae.model import ARCHITECTURES, SparseAutoencoder

__all__ = ["ARCHITECTURES", "SparseAutoencoder"]
