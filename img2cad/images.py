"""Input images to the style the model was trained on (GenCAD-Code renders, ``cad.render``).

Training images are 448 x 448: white background, grey faces, black edges, the part centred with
its projected bounding box fit to a 400 x 300 window. ``normalise`` turns any picture into that:

1. EXIF orientation applied; transparency composited on white; any mode to RGB.
2. The background is the median colour of the image border; the part is every pixel that differs
   from it by more than ``threshold`` in some channel (none: "nothing drawn").
3. Grey levels: the part keeps its luminance, shifted so the background becomes white (inverted
   first when the background is dark); the background becomes exactly white.
4. An image already in the training layout (part centred, filling 60-100 % of the 400 x 300
   window in one direction) is only resized to 448 px. Anything else (a photo, a tight crop, a
   small part on a large canvas) is cropped to the part and scaled so that its extent fits the
   window, centred.

The result is deterministic: the same file gives the same pixels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cad.io import InputError  # a file that cannot be used: the message names it and says what to do

SIZE = 448
WINDOW = (400, 300)  # cad.render.Style: fit_width, fit_height times SIZE
MIN_PART_PIXELS = 16




def open_image(path: str | Path) -> Image.Image:
    """The picture in ``path``, decoded, or InputError saying why it cannot be read."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file; give the path of a PNG or JPEG picture of a part")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: empty file (0 bytes); give a PNG or JPEG picture of a part")
    try:
        with Image.open(p) as im:
            im.load()
            img = im.copy()
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        what = "too large to decode safely" if isinstance(exc, Image.DecompressionBombError) else "not an image"
        raise InputError(f"{p}: {what}; give a PNG or JPEG picture of a part") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{p}: corrupt or truncated image ({exc}); save it again as PNG or JPEG") from exc
    if img.width == 0 or img.height == 0:
        raise InputError(f"{p}: empty image (0 pixels); give a PNG or JPEG picture of a part")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as RGB on white: EXIF rotation, alpha composited, 16-bit and float scaled."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = a.max() if a.size and a.max() > 0 else 1.0
        img = Image.fromarray(np.clip(a / hi * 255.0, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB")


def part_mask(rgb: np.ndarray, threshold: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the part, background colour): pixels differing from the border's median colour."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16)
    background = np.median(border, axis=0)
    mask = (np.abs(rgb.astype(np.int16) - background) > threshold).any(-1)
    return mask, background


def _grey(rgb: np.ndarray, mask: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Luminance as ink on white: background exactly 255, the part at most 240."""
    lum = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    bg = float(background @ np.array([0.299, 0.587, 0.114]))
    grey = lum + (255.0 - bg) if bg >= 128 else (255.0 - lum) + bg
    grey = np.where(mask, np.minimum(grey, 240.0), 255.0)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def in_training_layout(mask: np.ndarray) -> bool:
    """Part centred and filling 60-100 % of the 4:3 window in one direction (GenCAD renders)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    scale = SIZE / max(h, w)
    bw, bh = (xs.max() - xs.min() + 1) * scale, (ys.max() - ys.min() + 1) * scale
    cx, cy = (xs.min() + xs.max() + 1) / 2 * scale, (ys.min() + ys.max() + 1) / 2 * scale
    off_x, off_y = (max(h, w) - w) / 2 * scale, (max(h, w) - h) / 2 * scale  # padding to a square
    centred = abs(cx + off_x - SIZE / 2) <= 0.03 * SIZE and abs(cy + off_y - SIZE / 2) <= 0.03 * SIZE
    fill = max(bw / WINDOW[0], bh / WINDOW[1])
    inside = bw <= WINDOW[0] * 1.02 and bh <= WINDOW[1] * 1.02
    return centred and inside and fill >= 0.6


def normalise(img: Image.Image, name: str = "image") -> Image.Image:
    """A 448 x 448 RGB picture in the training style (see the module docstring)."""
    rgb = np.asarray(to_rgb(img))
    mask, background = part_mask(rgb)
    if mask.sum() < MIN_PART_PIXELS:
        raise InputError(f"{name}: nothing drawn (the image is one flat colour); give a picture of a part")
    layout = in_training_layout(mask)
    if layout and rgb.shape[:2] == (SIZE, SIZE) and not ((rgb < 250).any(-1) & ~mask).any():
        return Image.fromarray(rgb)  # already a training-style render: unchanged
    grey = _grey(rgb, mask, background)
    h, w = grey.shape
    canvas = Image.new("L", (SIZE, SIZE), 255)
    if layout:
        side = max(h, w)
        square = Image.new("L", (side, side), 255)
        square.paste(Image.fromarray(grey), ((side - w) // 2, (side - h) // 2))
        canvas = square if side == SIZE else square.resize((SIZE, SIZE), Image.LANCZOS)
    else:
        ys, xs = np.nonzero(mask)
        crop = Image.fromarray(grey[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
        scale = min(WINDOW[0] / crop.width, WINDOW[1] / crop.height)
        size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
        crop = crop.resize(size, Image.LANCZOS)
        canvas.paste(crop, ((SIZE - size[0]) // 2, (SIZE - size[1]) // 2))
    return canvas.convert("RGB")


def load_input(path: str | Path) -> Image.Image:
    """Open and normalise one input file; InputError (one line) for anything unusable."""
    return normalise(open_image(path), str(path))
