"""Image decoding shared by QA, preprocessing, training and serving (one function, one behaviour)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

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
