"""Two-stage inference: p(species) = Σ over the top-k groups of p(group) · p(species | group)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fieldguide.data.loader import ShardDataset, make_loader
from fieldguide.data.shards import ShardSet, flat_view
from fieldguide.errors import FieldguideError
from fieldguide.train.models import ModelBundle, eval_device, eval_transform


def routes(p_group: np.ndarray, k: int) -> np.ndarray:
    """(N, k) each row's top-k groups, best first (ties to the lower group id, so every caller routes alike)."""
    return np.argsort(-p_group, axis=1, kind="stable")[:, :k]


def combine(
    p_group: np.ndarray, p_child: dict[int, np.ndarray], species_of: dict[int, list[int]], n_species: int, k: int
) -> np.ndarray:
    """Species probabilities from router and child probabilities, routing each row to its top-k groups.

    Args:
        p_group: (N, G) router probabilities.
        p_child: group id → (N, S_g) child probabilities; only groups and rows that are routed are read.
        species_of: group id → the global species id of each child label.
        n_species: number of species overall.
        k: groups kept per row (1 is plain routing).
    """
    out = np.zeros((p_group.shape[0], n_species), dtype=np.float64)
    top = routes(p_group, k)
    rows = np.arange(p_group.shape[0])
    for rank in range(top.shape[1]):
        groups = top[:, rank]
        for g in np.unique(groups):
            sel = rows[groups == g]
            out[np.ix_(sel, species_of[int(g)])] += p_group[sel, g][:, None] * p_child[int(g)][sel]
    return out


@dataclass
class TwoStageTable:
    """Two-stage evaluation of a release on the whole test split (recorded with the release)."""

    n: int
    router_acc: float
    oracle_child_acc: float  # child accuracy when the true group is given
    end_to_end: dict[str, float]  # "top1@k=1" … accuracies of the combined prediction per routing k
    flat_acc: float | None = None  # flat classifier of the same backbone on all species, when one is trained
    versions: dict[str, str] = field(default_factory=dict)  # model name → version

    @classmethod
    def of(cls, hits: TwoStageHits) -> TwoStageTable:
        """The accuracies of two_stage_hits' per-image hits."""
        n = len(hits.router)
        mean = lambda right: float(right.mean()) if n else 0.0  # noqa: E731
        return cls(
            n=n,
            router_acc=mean(hits.router),
            oracle_child_acc=mean(hits.oracle_child),
            end_to_end={f"top1@k={k}": mean(right) for k, right in hits.end_to_end.items()},
            flat_acc=None if hits.flat is None else mean(hits.flat),
        )

    def rows(self) -> list[tuple[str, float]]:
        """(measure, value) rows for printing."""
        rows = [("router accuracy (group)", self.router_acc)]
        rows.append(("oracle child accuracy (true group)", self.oracle_child_acc))
        rows += [(f"end-to-end accuracy, {name}", acc) for name, acc in self.end_to_end.items()]
        if self.flat_acc is not None:
            rows.append(("flat classifier accuracy", self.flat_acc))
        return rows


@torch.no_grad()
def _probs(bundle: ModelBundle, shard_set: ShardSet) -> tuple[np.ndarray, np.ndarray]:
    """A model's probabilities and the global species labels over the test split, in shard order (CUDA if present)."""
    view = flat_view(shard_set)
    loader = make_loader(ShardDataset(shard_set, "test", view, eval_transform(bundle.meta.data_config)), 64)
    device = eval_device()
    model = bundle.model.eval().to(device)
    probs, labels = [], []
    for x, y in loader:
        probs.append(model(x.to(device)).float().softmax(1).cpu().numpy())
        labels.append(y.numpy())
    bundle.model.to("cpu")
    return np.concatenate(probs), np.concatenate(labels)


def check_classes(router: ModelBundle, children: dict[str, ModelBundle], shard_set: ShardSet) -> None:
    """Raise naming the first model whose classes differ from the dataset's groups or its group's species."""
    classes, dataset = shard_set.classes, shard_set.dataset_version[:12]
    if list(router.meta.classes) != list(classes.groups):
        raise FieldguideError(
            f"{router.meta.name} knows groups {list(router.meta.classes)}, but dataset {dataset} "
            f"has {list(classes.groups)}: evaluate it on its own dataset, or retrain it"
        )
    for group in classes.groups:
        child = children.get(group)
        if child is None:
            raise FieldguideError(f"the release has no child model for group {group!r}")
        if list(child.meta.classes) != classes.group_species(group):
            raise FieldguideError(
                f"{child.meta.name} knows species {list(child.meta.classes)}, but dataset {dataset} has "
                f"{classes.group_species(group)} in {group!r}: "
                "evaluate it on its own dataset, or retrain it"
            )


@dataclass
class TwoStageHits:
    """Per test image: whether each prediction was right (for paired comparisons and bootstrap intervals)."""

    router: np.ndarray  # router picked the true group
    oracle_child: np.ndarray  # the true group's child picked the species
    end_to_end: dict[int, np.ndarray]  # routing depth k → combined prediction right
    flat: np.ndarray | None = None  # flat classifier right


def two_stage_hits(
    router: ModelBundle,
    children: dict[str, ModelBundle],
    shard_set: ShardSet,
    ks: tuple[int, ...] = (1, 2, 3),
    flat: ModelBundle | None = None,
    strict: bool = True,
) -> TwoStageHits:
    """Which test images the router, the oracle child, the two-stage model at each k and the flat model get right.

    Args:
        router: the parent model.
        children: group → child model, for every group of the router.
        shard_set: the dataset whose test split is used.
        ks: routing depths (those above the number of groups are left out).
        flat: a flat classifier on all species, if one is compared.
        strict: refuse models whose classes differ from the dataset's (naming the model); when False (an older
            release measured on a newer dataset) classes the dataset lacks are never right and vice versa.

    Raises:
        FieldguideError: with `strict`, when the router's groups or a child's species differ from the dataset's.
    """
    species = list(shard_set.classes.species)
    groups = list(router.meta.classes)
    if strict:
        check_classes(router, children, shard_set)
    for name in groups:
        species += [s for s in children[name].meta.classes if s not in species]
    p_group, labels = _probs(router, shard_set)
    group_of = [shard_set.classes.species_group[species[s]] for s in labels]
    true_group = np.array([groups.index(g) if g in groups else -1 for g in group_of])
    p_child, species_of = {}, {}
    for g, name in enumerate(groups):
        p_child[g], _ = _probs(children[name], shard_set)
        species_of[g] = [species.index(s) for s in children[name].meta.classes]
    oracle = np.zeros((len(labels), len(species)))
    for g in range(len(groups)):
        sel = true_group == g
        oracle[np.ix_(sel, species_of[g])] = p_child[g][sel]
    return TwoStageHits(
        router=p_group.argmax(1) == true_group,
        oracle_child=(oracle.argmax(1) == labels) & (true_group >= 0),  # no child knows a group the router lacks
        end_to_end={
            k: combine(p_group, p_child, species_of, len(species), k).argmax(1) == labels
            for k in ks
            if k <= len(groups)
        },
        flat=None if flat is None else _probs(flat, shard_set)[0].argmax(1) == labels,
    )
