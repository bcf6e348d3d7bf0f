"""The result of explaining an answer: per method and answer token, a score for every input token.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> explanation = mmlens.explain(mmlens.load("tiny-llava"), [Image.new("RGB", (64, 64))],
    ...                              "<image> what colour ?", methods=["rollout"], answer="red")
    >>> explanation.heatmaps("rollout", target=0)[0].shape
    (64, 64)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmlens.layout import Modality, TokenLayout


@dataclass
class Explanation:
    """Scores ``(targets, seq)`` per method for one sample, with the layout to read them.

    ``answer_tokens`` are the explained tokens; ``tokens`` the whole
    teacher-forced sequence (prompt and earlier answer tokens). An explanation
    is data: :func:`mmlens.report.files.save_explanation` writes it to disk.
    """

    model: str
    prompt: str
    answer: str
    answer_tokens: list[str]
    tokens: list[str]
    positions: list[int]  # position predicting each answer token
    layout: TokenLayout  # one row
    images: list[Image.Image]
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # method -> (targets, seq)
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    milliseconds: dict[str, float] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(self.scores)

    def image_grid(self, method: str, target: int = 0, image: int = 0, view: int = 0) -> np.ndarray:
        """Scores of one image view on its patch grid, ``(rows, cols)``."""
        return self.layout.grid(self.scores[method][target], 0, image, view)

    def heatmaps(self, method: str, target: int = 0, views: str = "all") -> list[np.ndarray]:
        """One heatmap per image at its original pixel size."""
        return self.layout.to_heatmaps(self.scores[method][target][None], views=views)[0]

    def prompt_scores(self, method: str, target: int = 0) -> list[tuple[str, float]]:
        """``(token, score)`` for every text token the target can see (prompt words, earlier answer tokens)."""
        scores = self.scores[method][target]
        text = self.layout.mask(Modality.TEXT)[0]
        last = self.positions[target]
        return [(self.tokens[p], float(scores[p])) for p in range(last + 1) if text[p]]

    def to_json(self) -> dict[str, Any]:
        """Everything needed to redraw the explanation, as plain JSON types.

        Example:
            >>> sorted(explanation.to_json())[:3]
            ['answer', 'answer_tokens', 'layout']
        """
        methods = {}
        for method, scores in self.scores.items():
            per_target = []
            for j, token in enumerate(self.answer_tokens):
                per_target.append({
                    "token": token,
                    "position": self.positions[j],
                    "images": [
                        [_nan_to_none(self.image_grid(method, j, i, v)) for v in range(len(info.views))]
                        for i, info in enumerate(self.layout.images[0])
                    ],
                    "prompt": [[word, round(score, 6)] for word, score in self.prompt_scores(method, j)],
                })
            methods[method] = {
                "targets": per_target,
                "milliseconds": round(self.milliseconds.get(method, float("nan")), 3),
                "extras": _jsonable(self.extras.get(method, {})),
            }
        return {
            "model": self.model,
            "prompt": self.prompt,
            "answer": self.answer,
            "answer_tokens": self.answer_tokens,
            "tokens": self.tokens,
            "layout": self.layout.describe(0),
            "methods": methods,
        }


def _nan_to_none(grid: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in grid]


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 4096 else f"tensor{tuple(value.shape)}"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
