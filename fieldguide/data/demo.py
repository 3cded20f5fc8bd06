"""Procedural demo catalog: plant-like photos with a real group → species hierarchy, drawn without downloads.

Groups differ in overall morphology (rosettes, fronds, radial petals, grass blades); species within a group
differ in finer traits (hue, organ count, leaf width, texture, accent colour). Every image gets random pose,
scale, background, lighting, blur, noise and sometimes occlusion, so the router learns groups well while
species stay harder. Optional bad rows reproduce what real catalogs contain.
"""

from __future__ import annotations

import colorsys
import csv
import hashlib
import io
import math
import re
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from tqdm import tqdm

SPECIES_NAMES: dict[str, list[str]] = {
    "succulents": [
        "Echeveria elegans",
        "Aloe vera",
        "Haworthia fasciata",
        "Sempervivum tectorum",
        "Agave parryi",
        "Graptopetalum paraguayense",
        "Crassula perforata",
        "Aeonium arboreum",
    ],
    "ferns": [
        "Polypodium vulgare",
        "Athyrium filix-femina",
        "Dryopteris filix-mas",
        "Osmunda regalis",
        "Blechnum spicant",
        "Pteridium aquilinum",
        "Asplenium trichomanes",
        "Matteuccia struthiopteris",
    ],
    "flowers": [
        "Bellis perennis",
        "Papaver rhoeas",
        "Leucanthemum vulgare",
        "Calendula officinalis",
        "Geranium pratense",
        "Cosmos bipinnatus",
        "Anemone nemorosa",
        "Helianthus annuus",
    ],
    "grasses": [
        "Festuca glauca",
        "Poa pratensis",
        "Lolium perenne",
        "Briza media",
        "Phleum pratense",
        "Carex pendula",
        "Stipa tenuissima",
        "Holcus lanatus",
    ],
}
GROUPS = tuple(SPECIES_NAMES)
# Base hue and saturation/value ranges per group: species hues are spread around the base.
_GROUP_HUE = {"succulents": (0.36, 0.22), "ferns": (0.30, 0.26), "flowers": (0.92, 0.3), "grasses": (0.22, 0.12)}
BAD_KINDS = (
    "truncated",
    "empty",
    "not_an_image",
    "too_small",
    "conflicting_duplicate",
    "duplicate",
    "unknown_label",
    "missing",
    "format_not_allowed",
    "too_many_pixels",
    "rare_class",
)


@dataclass(frozen=True)
class Species:
    """Fine traits that separate species inside one group."""

    name: str
    group: str
    hue: float
    count: int
    width: float
    texture: str
    accent: tuple[int, int, int]


def slug(name: str) -> str:
    """Filesystem-safe folder name for a species or group."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _stable_fraction(text: str) -> float:
    """A number in [0, 1) from text, the same in every process (unlike hash(), which is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 100 / 100


def make_species(groups: list[str], per_group: int) -> list[Species]:
    """Deterministic species traits for the requested groups."""
    out = []
    for group in groups:
        names = SPECIES_NAMES.get(group, [])
        base_hue, spread = _GROUP_HUE.get(group, (_stable_fraction(group), 0.2))
        for i in range(per_group):
            name = names[i] if i < len(names) else f"{group.capitalize()} species {i + 1}"
            frac = i / max(1, per_group - (0 if spread >= 1 else 1))
            hue = (base_hue + (frac - 0.5) * spread) % 1.0 if spread < 1 else frac
            out.append(_species(name, group, i, hue))
    return out


def _species(name: str, group: str, i: int, hue: float) -> Species:
    """The i-th species' traits of a group at `hue`."""
    return Species(
        name=name,
        group=group,
        hue=hue,
        count=[5, 7, 9, 11, 13, 6, 8, 10][i % 8],
        width=[0.45, 0.28, 0.6, 0.36, 0.52, 0.3, 0.4, 0.56][i % 8],
        texture=["plain", "stripes", "spots", "plain", "stripes", "spots", "plain", "spots"][i % 8],
        accent=_rgb((hue + 0.5) % 1.0, 0.6, 0.35 + 0.6 * ((i * 7) % 5) / 4),
    )


def new_species(group: str, known: list[str]) -> Species:
    """A species of `group` that a catalog of its `known` species lacks: the group's shape, unseen traits and hue.

    Its hue lies beyond the group's range of species hues, its organ count, width and texture are those of the
    next index.
    """
    base_hue, spread = _GROUP_HUE.get(group, (_stable_fraction(group), 0.2))
    unused = [n for n in SPECIES_NAMES.get(group, []) if n not in known]
    name = unused[0] if unused else f"{group.capitalize()} species {len(known) + 1}"
    return _species(name, group, len(known), (base_hue + 0.5 * spread + 0.15) % 1.0)


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return int(r * 255), int(g * 255), int(b * 255)


def _leaf(x: float, y: float, angle: float, length: float, width: float, n: int = 10) -> list[tuple[float, float]]:
    """Lens-shaped leaf polygon from base (x, y) pointing at `angle`."""
    ca, sa = math.cos(angle), math.sin(angle)
    side_a, side_b = [], []
    for k in range(n + 1):
        t = k / n
        half = width * math.sin(math.pi * t) ** 0.8 / 2
        along = t * length
        side_a.append((x + along * ca - half * sa, y + along * sa + half * ca))
        side_b.append((x + along * ca + half * sa, y + along * sa - half * ca))
    return side_a + side_b[::-1]


def _texture(draw: ImageDraw.ImageDraw, sp: Species, rng: np.random.Generator, pts: list, color: tuple) -> None:
    if sp.texture == "plain":
        return
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    cx, cy = sum(xs) / len(xs), sum(ys) / len(ys)
    if sp.texture == "stripes":
        n = len(pts) // 2
        draw.line([pts[0], pts[n // 2], pts[n - 1]][:2] + [(cx, cy)], fill=color, width=max(1, int(len(pts) / 8)))
        draw.line([pts[0], (cx, cy), pts[n]], fill=color, width=2)
    else:
        for _ in range(3):
            j = rng.integers(len(pts))
            px, py = (pts[j][0] + 2 * cx) / 3, (pts[j][1] + 2 * cy) / 3
            r = 1.5 + rng.random() * 2
            draw.ellipse([px - r, py - r, px + r, py + r], fill=color)


def _jitter_colour(rgb: tuple[int, int, int], rng: np.random.Generator, amount: float = 12) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in rgb)  # type: ignore[return-value]


def _draw_plant(draw: ImageDraw.ImageDraw, sp: Species, rng: np.random.Generator, S: int) -> None:
    cx = S / 2 + rng.normal(0, S * 0.06)
    cy = S / 2 + rng.normal(0, S * 0.06)
    r = S * rng.uniform(0.30, 0.44)
    rot = rng.uniform(0, 2 * math.pi)
    hue = sp.hue + rng.normal(0, 0.025)
    count = max(3, sp.count + int(rng.integers(-1, 2)))
    width = sp.width * rng.uniform(0.85, 1.15)
    if sp.group == "succulents":
        for layer, (scale, sat, val) in enumerate([(1.0, 0.45, 0.55), (0.7, 0.5, 0.7), (0.42, 0.55, 0.85)]):
            base = _rgb(hue, sat, val)
            for k in range(count):
                a = rot + 2 * math.pi * k / count + layer * math.pi / count
                pts = _leaf(cx, cy, a, r * scale, r * scale * width * 1.1)
                draw.polygon(pts, fill=_jitter_colour(base, rng, 8), outline=sp.accent)
                _texture(draw, sp, rng, pts, sp.accent)
    elif sp.group == "ferns":
        for _ in range(int(rng.integers(1, 3))):
            a = -math.pi / 2 + rng.normal(0, 0.5)
            curve = rng.normal(0, 0.3)
            x0, y0 = cx - math.cos(a) * r, cy - math.sin(a) * r
            spine = []
            for k in range(count * 2 + 2):
                t = k / (count * 2 + 1)
                ang = a + curve * t
                spine.append((x0 + math.cos(ang) * 2 * r * t, y0 + math.sin(ang) * 2 * r * t))
            colour = _rgb(hue, 0.65, 0.55)
            draw.line(spine, fill=_rgb(hue, 0.5, 0.35), width=max(2, S // 60))
            for k in range(1, len(spine) - 1):
                t = k / len(spine)
                (x, y), (xn, yn) = spine[k], spine[k + 1]
                ang = math.atan2(yn - y, xn - x)
                length = r * 0.55 * (1 - t) + r * 0.1
                for side in (1, -1):
                    pts = _leaf(x, y, ang + side * 1.25, length, length * width * 0.7, 6)
                    draw.polygon(pts, fill=_jitter_colour(colour, rng, 10))
                    if sp.texture == "spots" and k % 2 == 0:
                        px, py = pts[3]
                        draw.ellipse([px - 1.5, py - 1.5, px + 1.5, py + 1.5], fill=sp.accent)
                    elif sp.texture == "stripes":
                        draw.line([pts[0], pts[len(pts) // 4]], fill=sp.accent, width=1)
    elif sp.group == "flowers":
        stem_a = math.pi / 2 + rng.normal(0, 0.3)
        draw.line([(cx, cy), (cx + math.cos(stem_a) * S, cy + math.sin(stem_a) * S)], fill=(40, 110, 40), width=S // 40)
        petal = _rgb(hue, rng.uniform(0.55, 0.9), rng.uniform(0.8, 1.0))
        for k in range(count):
            a = rot + 2 * math.pi * k / count
            pts = _leaf(cx, cy, a, r, r * width, 10)
            draw.polygon(pts, fill=_jitter_colour(petal, rng, 10), outline=_jitter_colour(petal, rng, 40))
            _texture(draw, sp, rng, pts, sp.accent)
        disc = r * (0.18 + 0.1 * width)
        draw.ellipse([cx - disc, cy - disc, cx + disc, cy + disc], fill=sp.accent)
    else:  # grasses and unknown groups: blades from the ground
        ground = S * rng.uniform(0.85, 1.0)
        for k in range(count + 6):
            x = cx + rng.normal(0, r * 0.35)
            a = -math.pi / 2 + rng.normal(0, 0.35)
            length = r * rng.uniform(1.2, 2.0)
            bend = rng.normal(0, 0.25)
            pts = [(x, ground)]
            for t in np.linspace(0.2, 1.0, 5):
                ang = a + bend * t
                pts.append((x + math.cos(ang) * length * t, ground + math.sin(ang) * length * t))
            colour = _jitter_colour(_rgb(hue, 0.55, 0.55 + 0.3 * (k % 3) / 2), rng, 10)
            draw.line(pts, fill=colour, width=max(1, int(S * 0.03 * width * 2)))
            if sp.texture != "plain":
                tx, ty = pts[-1]
                head = S * 0.02 * (2 if sp.texture == "spots" else 1)
                draw.ellipse([tx - head, ty - head * 2, tx + head, ty + head * 2], fill=sp.accent)


def render(sp: Species, rng: np.random.Generator, size: int) -> Image.Image:
    """Draw one photo of `sp` at `size`x`size` (drawn at 2x, then downsampled for anti-aliasing)."""
    S = size * 2
    top = rng.uniform(60, 200, 3)
    bottom = rng.uniform(30, 160, 3)
    grad = np.linspace(0, 1, S)[:, None, None]
    bg = (top * (1 - grad) + bottom * grad) * np.ones((S, S, 3))
    img = Image.fromarray(bg.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):  # clutter: pebbles, soil, foreign leaves
        x, y, rr = rng.uniform(0, S), rng.uniform(0, S), rng.uniform(S * 0.03, S * 0.12)
        draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=tuple(int(c) for c in rng.uniform(40, 200, 3)))
    _draw_plant(draw, sp, rng, S)
    if rng.random() < 0.3:  # partial occlusion by something in front
        w, h = rng.uniform(0.15, 0.35, 2) * S
        x, y = rng.uniform(0, S - w), rng.uniform(0, S - h)
        draw.rectangle([x, y, x + w, y + h], fill=tuple(int(c) for c in rng.uniform(20, 220, 3)))
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.8, 1.2))
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.0)))
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, rng.uniform(0, 8), (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def encode_photo(img: Image.Image, rng: np.random.Generator) -> tuple[bytes, str]:
    """Mostly JPEG; a few valid images in the awkward encodings real catalogs contain."""
    buf = io.BytesIO()
    roll = rng.random()
    if roll < 0.01:
        img.convert("CMYK").save(buf, "JPEG", quality=92)
    elif roll < 0.02:
        img.convert("RGBA").save(buf, "PNG")
        return buf.getvalue(), "png"
    elif roll < 0.03:
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(buf, "PNG")
        return buf.getvalue(), "png"
    elif roll < 0.04:  # stored sideways with an EXIF orientation tag, as phones do
        exif = Image.Exif()
        exif[0x0112] = 6
        img.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=92, exif=exif)
    else:
        img.save(buf, "JPEG", quality=92)
    return buf.getvalue(), "jpg"


def _png_bomb_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge image: a decompression bomb stopped at the header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@dataclass
class DemoResult:
    """Where the demo catalog was written and what it holds."""

    catalog: Path
    taxonomy: Path
    bad_rows: Path
    good: int
    bad: int


def generate(
    out: Path,
    groups: list[str] | None = None,
    species_per_group: int = 5,
    images_per_species: int = 60,
    size: int = 96,
    bad_fraction: float = 0.03,
    seed: int = 0,
    progress: bool = True,
) -> DemoResult:
    """Write images, catalog.csv (uri,label,group), taxonomy.yaml and bad_rows.csv (the planted bad rows)."""
    groups = list(groups or GROUPS[:4])
    out = Path(out)
    if (out / "images").exists():
        shutil.rmtree(out / "images")
    images_dir = out / "images"
    species = make_species(groups, species_per_group)
    rows: list[tuple[str, str, str]] = []
    total = len(species) * images_per_species
    with tqdm(total=total, desc="demo images", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for si, sp in enumerate(species):
            folder = images_dir / slug(sp.group) / slug(sp.name)
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(images_per_species):
                rng = np.random.default_rng([seed, si, k])
                data, ext = encode_photo(render(sp, rng, size), rng)
                path = folder / f"{k:05d}.{ext}"
                path.write_bytes(data)
                rows.append((path.relative_to(out).as_posix(), sp.name, sp.group))
                bar.update()
    order = np.random.default_rng([seed, 999]).permutation(len(rows))
    rows = [rows[i] for i in order]
    taxonomy: dict[str, list[str]] = {g: [s.name for s in species if s.group == g] for g in groups}
    bad = _plant_bad_rows(out, rows, species, taxonomy, size, bad_fraction, seed)
    with (out / "catalog.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uri", "label", "group"])
        writer.writerows(rows)
    (out / "taxonomy.yaml").write_text(yaml.safe_dump({"groups": taxonomy}, sort_keys=False, allow_unicode=True))
    with (out / "bad_rows.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uri", "label", "group", "expected_reason"])
        writer.writerows(bad)
    return DemoResult(out / "catalog.csv", out / "taxonomy.yaml", out / "bad_rows.csv", total, len(bad))


def _plant_bad_rows(
    out: Path,
    rows: list[tuple[str, str, str]],
    species: list[Species],
    taxonomy: dict[str, list[str]],
    size: int,
    fraction: float,
    seed: int,
) -> list[tuple[str, str, str, str]]:
    """Insert realistic bad rows into `rows` (in place); return them with the reason QA must give."""
    n_bad = round(len(rows) * fraction)
    if n_bad <= 0:
        return []
    rng = np.random.default_rng([seed, 4242])
    bad_dir = out / "images" / "incoming"
    bad_dir.mkdir(parents=True, exist_ok=True)
    planted: list[tuple[str, str, str, str]] = []
    kinds = [BAD_KINDS[i % len(BAD_KINDS)] for i in range(max(n_bad, len(BAD_KINDS) if n_bad >= 5 else n_bad))]
    for i, kind in enumerate(kinds):
        sp = species[int(rng.integers(len(species)))]
        name = f"bad-{i:04d}"
        fresh = render(sp, np.random.default_rng([seed, 777, i]), size)

        def write(data: bytes, suffix: str = "jpg", stem: str = name) -> str:
            (bad_dir / f"{stem}.{suffix}").write_bytes(data)
            return f"images/incoming/{stem}.{suffix}"

        jpeg = io.BytesIO()
        fresh.save(jpeg, "JPEG", quality=92)
        jpg = jpeg.getvalue()
        new: list[tuple[str, str, str, str]] = []
        if kind == "truncated":
            new.append((write(jpg[: len(jpg) * 6 // 10]), sp.name, sp.group, kind))
        elif kind == "empty":
            new.append((write(b""), sp.name, sp.group, kind))
        elif kind == "not_an_image":
            new.append((write(b"field notes: leaf photo to follow\n" * 20), sp.name, sp.group, kind))
        elif kind == "too_small":
            tiny = io.BytesIO()
            fresh.resize((16, 16)).save(tiny, "JPEG")
            new.append((write(tiny.getvalue()), sp.name, sp.group, kind))
        elif kind == "conflicting_duplicate":
            other = (
                next(s for s in species if s.group == sp.group and s.name != sp.name)
                if len(taxonomy[sp.group]) > 1
                else sp
            )
            new.append((write(jpg, stem=name + "a"), sp.name, sp.group, kind))
            new.append((write(jpg, stem=name + "b"), other.name, other.group, kind))
        elif kind == "duplicate":
            good = [j for j, r in enumerate(rows) if not r[0].startswith("images/incoming/")]
            idx = good[int(rng.integers(len(good)))]
            src = rows[idx]
            uri = write((out / src[0]).read_bytes(), suffix=src[0].rsplit(".", 1)[1])
            rows.insert(int(rng.integers(idx + 1, len(rows) + 1)), (uri, src[1], src[2]))
            planted.append((uri, src[1], src[2], kind))
            continue
        elif kind == "unknown_label":
            new.append((write(jpg), "Mysteria ignota", sp.group, kind))
        elif kind == "missing":
            new.append((f"images/incoming/{name}-lost.jpg", sp.name, sp.group, kind))
        elif kind == "format_not_allowed":
            gif = io.BytesIO()
            fresh.save(gif, "GIF")
            new.append((write(gif.getvalue(), "gif"), sp.name, sp.group, kind))
        elif kind == "too_many_pixels":
            new.append((write(_png_bomb_header(30000, 30000), "png"), sp.name, sp.group, kind))
        elif kind == "rare_class":
            if any(p[3] == "rare_class" for p in planted):
                continue
            rare = f"{sp.group.capitalize()} rarissima"
            taxonomy[sp.group].append(rare)
            for j in range(2):
                img = render(sp, np.random.default_rng([seed, 778, j]), size)
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=92)
                new.append((write(buf.getvalue(), stem=f"{name}-{j}"), rare, sp.group, kind))
        for row in new:
            rows.insert(int(rng.integers(0, len(rows) + 1)), row[:3])
            planted.append(row)
    return planted
