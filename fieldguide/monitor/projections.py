"""The reductions a release's monitoring reference fixes, and what is compared of one answer (numpy only).

The HTTP front applies them to every request before logging it, so they must not import torch, pandas or sklearn
(fitting does, lazily); fieldguide.monitor.reference builds and saves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_DIR = "reference"
PROJECTIONS = "projections.npz"
META = "reference.json"


@dataclass
class Projections:
    """One PCA per model (mean and components), all reduced to `width` columns (zero-padded when fewer fit)."""

    width: int
    mean: dict[str, np.ndarray]
    components: dict[str, np.ndarray]  # model name → (k, D), k ≤ width

    @classmethod
    def fit(cls, embeddings: dict[str, np.ndarray], width: int) -> Projections:
        """PCA of each model's embeddings (rows: images), as many components as the rows allow, at most `width`."""
        from sklearn.decomposition import PCA

        mean, components = {}, {}
        for name, x in embeddings.items():
            k = min(width, x.shape[1], max(len(x) - 1, 1))
            pca = PCA(n_components=k, random_state=0).fit(x) if len(x) > 1 else None
            mean[name] = pca.mean_ if pca is not None else x.mean(0)
            components[name] = pca.components_ if pca is not None else np.zeros((0, x.shape[1]))
        return cls(width, mean, components)

    def reduce(self, name: str, x: np.ndarray) -> np.ndarray:
        """(N, D) embeddings of model `name` → (N, width)."""
        if name not in self.mean:
            return np.zeros((len(x), self.width), np.float32)
        out = (x - self.mean[name]) @ self.components[name].T
        return np.pad(out, ((0, 0), (0, self.width - out.shape[1]))).astype(np.float32)

    def reduce_each(self, names: list[str], rows: list[np.ndarray]) -> np.ndarray:
        """Rows embedded by different models (row i by model names[i]) → (N, width), one product per model."""
        out = np.zeros((len(rows), self.width), np.float32)
        for name in set(names):
            at = [i for i, n in enumerate(names) if n == name]
            out[at] = self.reduce(name, np.stack([rows[i] for i in at]))
        return out

    def save(self, folder: Path) -> None:
        """Write projections.npz (plain arrays: loaded without pickle)."""
        arrays = {f"mean/{n}": m for n, m in self.mean.items()}
        arrays |= {f"components/{n}": c for n, c in self.components.items()}
        np.savez(folder / PROJECTIONS, width=np.array(self.width), **arrays)

    @classmethod
    def load(cls, release_folder: Path) -> Projections | None:
        """The projections of a release folder, or None for a release assembled before monitoring existed."""
        path = release_folder / REFERENCE_DIR / PROJECTIONS
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            mean = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("mean/")}
            components = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("components/")}
            return cls(int(data["width"]), mean, components)


def observation(release: Any, p_group: np.ndarray, p_species: np.ndarray) -> dict[str, Any]:
    """What the monitor compares of one answer (the same for a request and for a reference image).

    The router's group and confidence, the top-1 group child's species and its own confidence p(species | group),
    and the two-stage answer.

    Args:
        release: the release's fieldguide.serve.front.ReleaseView (or its TwoStagePredictor).
        p_group: the router's probabilities.
        p_species: the two-stage species probabilities.
    """
    g = int(p_group.argmax())
    own = p_species[release.species_of[g]] / max(float(p_group[g]), 1e-12)  # p(species | g) for g's species
    s = int(np.argmax(p_species))
    return {
        "group": release.groups[g],
        "group_probability": float(p_group[g]),
        "child_model": release.child_name(g),
        "child_species": release.species[release.species_of[g][int(own.argmax())]],
        "child_confidence": float(own.max()),
        "species": release.species[s],
        "species_probability": float(p_species[s]),
    }
