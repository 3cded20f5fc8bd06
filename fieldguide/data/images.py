"""Image decoding shared by QA, preprocessing, training and serving (one function, one behaviour)."""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats that PIL can identify; QARules.allowed_formats narrows this further.
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageRejected(Exception):
    """An image failed a rule; `reason` is the stable reason code, `detail` the human explanation."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageLimits:
    """Limits checked from the header before any pixel is decoded."""

    allowed_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
    min_side: int = 1
    max_pixels: int = 40_000_000


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (CMYK, L, P, RGBA, LA, 16-bit) to 8-bit RGB; alpha is composited on white."""
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.uint32 if img.mode == "I" else np.uint16).astype(np.float64)
        top = 65535.0 if img.mode != "I" or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    """Identify and fully decode image bytes under `limits`, returning an EXIF-oriented RGB image.

    Raises:
        ImageRejected: with reason empty, not_an_image, format_not_allowed, too_many_pixels, too_small,
            truncated or corrupt.
    """
    if not data:
        raise ImageRejected("empty", "file has zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", "content is not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any header parse failure means the file is unusable
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageRejected(reason, f"header could not be parsed ({exc})") from None
    fmt = img.format or "unknown"
    if fmt not in limits.allowed_formats:
        raise ImageRejected("format_not_allowed", f"{fmt} is not one of {', '.join(limits.allowed_formats)}")
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ImageRejected("too_many_pixels", f"{width}x{height} exceeds {limits.max_pixels} pixels")
    if min(width, height) < limits.min_side:
        raise ImageRejected("too_small", f"{width}x{height} is below the minimum side {limits.min_side}")
    try:
        img.load()
        rgb = to_rgb(ImageOps.exif_transpose(img))
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageRejected(reason, f"decoding failed ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - decoder bugs on hostile input must not crash the run
        raise ImageRejected("corrupt", f"decoding failed ({exc})") from None
    rgb.info["source_format"] = fmt
    return rgb


def load_rgb(data: bytes, limits: ImageLimits | None = None) -> Image.Image:
    """Decode bytes to an oriented RGB image: the one preprocessing entry used by training and serving."""
    return open_checked(data, limits or ImageLimits())


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side equals `size` (down or up), keeping the aspect ratio."""
    width, height = img.size
    scale = size / min(width, height)
    if scale == 1:
        return img
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    return img.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0 if scale < 0.5 else None)


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    """Encode an RGB image as baseline JPEG bytes."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


# timm's interpolation names → Pillow's filters (timm.data.transforms.str_to_interp_mode, applied by torchvision).
_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class EvalTransform:
    """A model's evaluation preprocessing in Pillow + numpy: the one path of evaluation, validation and serving.

    It computes what timm's `create_transform(**data_config, is_training=False)` computes (torchvision's Resize of
    the shorter side to ⌊size / crop_pct⌋, CenterCrop, ToTensor, Normalize) without importing torch, so the HTTP
    front can run it; tests/test_preprocess.py holds the two to `allclose(atol=1e-6)`.
    """

    size: tuple[int, int]  # (height, width) the model takes
    scale: tuple[int, int]  # the resize before the crop: ⌊size / crop_pct⌋ per side
    squash: bool  # crop_mode "squash": both sides resized to `scale` (aspect ratio not kept)
    resample: Image.Resampling  # the data config's interpolation
    mean: np.ndarray  # (3, 1, 1) float32, per-channel mean of the 0..1 pixels
    std: np.ndarray  # (3, 1, 1) float32

    @classmethod
    def of(cls, data_config: dict[str, Any]) -> EvalTransform:
        """The transform of a timm data config (input_size, interpolation, mean, std, crop_pct, crop_mode).

        Raises:
            ValueError: a crop mode or interpolation this transform does not reproduce.
        """
        _, height, width = data_config["input_size"]
        crop_pct = data_config.get("crop_pct") or 0.875
        mode = data_config.get("crop_mode") or "center"
        interpolation = data_config.get("interpolation", "bilinear")
        if mode not in ("center", "squash") or (mode == "center" and height != width) or crop_pct > 1:
            raise ValueError(
                f"crop_mode {mode!r} at {height}x{width}, crop_pct {crop_pct} is not supported "
                "(square 'center' or 'squash', crop_pct ≤ 1)"
            )
        if interpolation not in _FILTERS:
            raise ValueError(f"interpolation {interpolation!r} is not supported ({', '.join(_FILTERS)})")
        channel = lambda v: np.asarray(v, np.float32).reshape(3, 1, 1)  # noqa: E731
        return cls(
            size=(height, width),
            scale=(math.floor(height / crop_pct), math.floor(width / crop_pct)),
            squash=mode == "squash",
            resample=_FILTERS[interpolation],
            mean=channel(data_config["mean"]),
            std=channel(data_config["std"]),
        )

    def __call__(self, img: Image.Image) -> np.ndarray:
        """An RGB image → the model's (3, H, W) float32 input."""
        img = self.resize(img)
        w, h = img.size
        top, left = int(round((h - self.size[0]) / 2.0)), int(round((w - self.size[1]) / 2.0))
        img = img.crop((left, top, left + self.size[1], top + self.size[0]))
        x = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        return (x - self.mean) / self.std

    def resize(self, img: Image.Image) -> Image.Image:
        """Torchvision's Resize: the shorter side to `scale` (int of the scaled longer side), or both when squashing."""
        w, h = img.size
        if self.squash:
            new = (self.scale[1], self.scale[0])
        else:
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.scale[0], int(self.scale[0] * long / short)
            new = (new_short, new_long) if w <= h else (new_long, new_short)
        return img if new == (w, h) else img.resize(new, self.resample)


IMAGE_FEATURES = ("brightness", "contrast", "sharpness", "mean_r", "mean_g", "mean_b", "width", "height", "aspect")


def image_stats(img: Image.Image) -> dict[str, float]:
    """Per-image features for drift monitoring: brightness, contrast, sharpness (Laplacian variance), colour, size."""
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    lap = 4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    means = rgb.reshape(-1, 3).mean(0)
    return {
        "brightness": float(gray.mean()),
        "contrast": float(gray.std()),
        "sharpness": float(lap.var()) if lap.size else 0.0,
        "mean_r": float(means[0]),
        "mean_g": float(means[1]),
        "mean_b": float(means[2]),
        "width": float(img.width),
        "height": float(img.height),
        "aspect": img.width / max(img.height, 1),
    }
