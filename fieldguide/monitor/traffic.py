"""Demo traffic: fresh photos from the demo generator sent to a server, in distribution or shifted.

Each photo is drawn from its own random stream, [TRAFFIC_STREAM, seed, i], which no catalog the demo generator
writes ever uses (those are [seed, species, image] and [seed, 777 | 4242, ...]), so traffic is never a training
image. Shifts tell the monitoring story:

- `dusk`: darker, warmer light (brightness × 0.35–0.5, red up, blue down).
- `blur`: a worse camera (Gaussian blur, heavy JPEG compression).
- `new-species`: a species of the group that the release's taxonomy lacks (fieldguide.data.demo.new_species).
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from fieldguide.data.demo import Species, encode_photo, make_species, new_species, render
from fieldguide.errors import FieldguideError

SHIFTS = ("dusk", "blur", "new-species")
TRAFFIC_STREAM = 8_060_700


@dataclass
class Photo:
    """One traffic photo and what it shows."""

    data: bytes
    species: str
    group: str
    shift: str = ""


def demo_species(taxonomy: dict[str, list[str]]) -> dict[str, list[Species]]:
    """The demo generator's species behind a release's taxonomy (group → species).

    Raises:
        FieldguideError: a species the demo generator does not draw (the release was trained on another catalog).
    """
    out = {}
    for group, names in taxonomy.items():
        made = {s.name: s for s in make_species([group], len(names))}
        missing = [n for n in names if n not in made]
        if missing:
            raise FieldguideError(
                f"traffic sends demo photos, but the release's species {missing[0]!r} ({group}) is not one the demo "
                f"generator draws with {len(names)} species per group: was it trained on the demo catalog?"
            )
        out[group] = [made[n] for n in names]
    return out


def release_taxonomy(release_folder: Any) -> dict[str, list[str]]:
    """A stored release's groups and their species (group → species), read without loading its models."""
    from fieldguide.serve.front import ReleaseView

    return ReleaseView(release_folder).taxonomy()


def shifted(img: Image.Image, shift: str, rng: np.random.Generator) -> Image.Image:
    """A photo under a shift's conditions (dusk light or a worse camera; new-species changes the plant instead)."""
    if shift == "dusk":
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.35, 0.5))
        tint = np.array([1.12, 0.95, 0.7], dtype=np.float32)
        return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) * tint, 0, 255).astype(np.uint8), "RGB")
    if shift == "blur":
        return img.filter(ImageFilter.GaussianBlur(rng.uniform(1.4, 2.0)))
    return img


def traffic_photos(
    taxonomy: dict[str, list[str]], n: int, seed: int, size: int, shift: str = "", group: str = ""
) -> Iterator[Photo]:
    """`n` fresh demo photos of a release's species (only `group`'s when given), all under `shift` when given.

    Raises:
        FieldguideError: an unknown shift or group, new-species without a group, or a release not trained on demo data.
    """
    if shift and shift not in SHIFTS:
        raise FieldguideError(f"unknown shift {shift!r}; choose one of {', '.join(SHIFTS)}")
    if group and group not in taxonomy:
        raise FieldguideError(f"unknown group {group!r}; the release's groups: {', '.join(taxonomy)}")
    if shift == "new-species" and not group:
        raise FieldguideError("--shift new-species needs --group G: the group the new species belongs to")
    species = demo_species(taxonomy)
    pool = species[group] if group else [s for members in species.values() for s in members]
    if shift == "new-species":
        pool = [new_species(group, taxonomy[group])]
    for i in range(n):
        rng = np.random.default_rng([TRAFFIC_STREAM, seed, i])
        sp = pool[int(rng.integers(len(pool)))]
        img = shifted(render(sp, rng, size), shift, rng)
        if shift == "blur":  # a worse camera also compresses harder
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=int(rng.integers(25, 45)))
            data = buf.getvalue()
        else:
            data, _ = encode_photo(img, rng)
        yield Photo(data, sp.name, sp.group, shift)


@dataclass
class Sent:
    """What came back for the photos sent."""

    statuses: Counter[int] = field(default_factory=Counter)
    groups: Counter[str] = field(default_factory=Counter)
    answers: list[dict[str, Any]] = field(default_factory=list)  # request id, truth and answer per 200
    seconds: float = 0.0

    def line(self) -> str:
        """A one-line summary."""
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        groups = ", ".join(f"{k} {v}" for k, v in self.groups.most_common())
        rate = sum(self.statuses.values()) / self.seconds if self.seconds else 0.0
        sent = sum(self.statuses.values())
        return f"sent {sent} in {self.seconds:.1f} s ({rate:.1f}/s); status {statuses}; answered groups {groups}"


def send(
    url: str, photos: Iterator[Photo], n: int, rate: float = 0.0, concurrency: int = 8, progress: bool = True
) -> Sent:
    """POST each photo to `url`/classify, `concurrency` at a time, at most `rate` per second when given."""
    import httpx
    from tqdm import tqdm

    out = Sent()
    lock = threading.Lock()
    start = time.monotonic()
    bar = tqdm(total=n, desc="traffic", unit="req", disable=not progress, dynamic_ncols=True)
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:

        def one(item: tuple[int, Photo]) -> None:
            i, photo = item
            if rate:
                time.sleep(max(0.0, start + i / rate - time.monotonic()))
            try:
                response = client.post(f"{url}/classify", files={"file": ("photo.jpg", photo.data, "image/jpeg")})
                status, body = response.status_code, response.json() if response.status_code == 200 else {}
            except httpx.HTTPError:
                status, body = 0, {}
            with lock:
                out.statuses[status] += 1
                if body:
                    out.groups[body["group"]["name"]] += 1
                    out.answers.append(
                        {
                            "request_id": body["request_id"],
                            "species": photo.species,
                            "group": photo.group,
                            "shift": photo.shift,
                            "answered_species": body["species"][0]["name"],
                            "answered_group": body["group"]["name"],
                        }
                    )
                bar.update()

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, enumerate(photos)))
    bar.close()
    out.seconds = time.monotonic() - start
    return out


def top1_on(bundle: Any, photos: list[Photo], store_size: int, jpeg_quality: int) -> float:
    """A model's top-1 on traffic photos, each seen as the shards store it (a child's photos: its group's only).

    Used to compare a retrained model with production on fresh shifted photos that neither saw in training.
    """
    import torch

    from fieldguide.data.images import load_rgb
    from fieldguide.monitor.capture import as_stored
    from fieldguide.train.models import eval_transform

    transform = eval_transform(bundle.meta.data_config)
    batch = torch.stack([transform(as_stored(load_rgb(p.data), store_size, jpeg_quality)) for p in photos])
    with torch.no_grad():
        answers = bundle.model(batch).argmax(1).tolist()
    classes = list(bundle.meta.classes)
    return sum(classes[a] == p.species for a, p in zip(answers, photos, strict=True)) / max(len(photos), 1)
