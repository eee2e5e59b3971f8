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
   window, centred (area-averaged when shrunk, bilinear when enlarged: no overshoot beside lines).
5. Redrawn in the renderer's palette (``restyle``), which the profile fits read exactly (black
   one-pixel lines, one flat grey for planar faces; the part's greys scaled to it where it is
   missing): JPEG noise, resampling blur, a tint and the grey fringe of an outline would otherwise
   hide the faces and lines. In an enlarged picture, a line's faded stretches are kept too.

A 448 x 448 picture in the renderer's greys, on pure white, with the part inside the centred
window (not necessarily centred: the renderer centres the projected corners of the part's
bounding box) is a render and is used unchanged.

The result is deterministic: the same file gives the same pixels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.ndimage import binary_dilation, distance_transform_edt, grey_closing, label
from skimage.morphology import skeletonize

from cad.io import InputError  # a file that cannot be used: the message names it and says what to do
from cad.render import GENCAD_STYLE

NORMALISE_VERSION = 5  # raised whenever normalise gives other pixels: img2cad predict then redoes its earlier outputs
SIZE = 448
WINDOW = (400, 300)  # cad.render.Style: fit_width, fit_height times SIZE
MIN_PART_PIXELS = 16
PART_BELOW = 216  # restyle: grey levels below this are the part (the renders' faces are at most ~180)
LINE_BELOW = 60  # ... below this a line (reward.score.drawn_lines' threshold)
LINE_CONTRAST = 30  # ... a pixel this much darker than its 5 x 5 grey closing lies on a line
LINE_FAINT = 12  # ... and one this much darker, 8-connected to a line, on its faint continuation (an enlarged line's gaps)
PLANAR_BAND = 6  # ... a face whose pixels lie mostly (PLANAR_SHARE) this close to the planar grey is planar,
PLANAR_SHARE = 0.8
PLANAR_INNER = 2  # ... that share taken over a face's pixels further than this from a line or the outline (away
MIN_INNER = 10  # from resampling's rings beside the lines), where it has at least this many of them
PLANAR_SNAP = 15  # ... and its pixels this close to it are set to it (elsewhere only those within FLAT_SNAP)
FLAT_SNAP = 3
LEVEL_SHARE = 0.1  # _levelled: fewer part pixels than this share near the planar grey, and more near the commonest level
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


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


def in_training_layout(mask: np.ndarray, centred: bool = True) -> bool:
    """Part filling 60-100 % of the 4:3 window in one direction, centred (``centred``), or else
    anywhere inside the centred window: a render fits the projected corners of the part's
    bounding box to the window, so a part that does not reach the corners it projects (an L, a
    boss off one end) lies off the image's centre."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    scale = SIZE / max(h, w)
    off_x, off_y = (max(h, w) - w) / 2 * scale, (max(h, w) - h) / 2 * scale  # padding to a square
    left, right = xs.min() * scale + off_x, (xs.max() + 1) * scale + off_x
    top, bottom = ys.min() * scale + off_y, (ys.max() + 1) * scale + off_y
    bw, bh = right - left, bottom - top
    fill = max(bw / WINDOW[0], bh / WINDOW[1])
    if centred:
        placed = abs((left + right) / 2 - SIZE / 2) <= 0.03 * SIZE and abs((top + bottom) / 2 - SIZE / 2) <= 0.03 * SIZE
        placed = placed and bw <= WINDOW[0] * 1.02 and bh <= WINDOW[1] * 1.02
    else:
        margin = 0.01 * SIZE
        x0, y0 = (SIZE - WINDOW[0]) / 2 - margin, (SIZE - WINDOW[1]) / 2 - margin
        placed = left >= x0 and top >= y0 and right <= SIZE - x0 and bottom <= SIZE - y0
    return placed and fill >= 0.6


def normalise(img: Image.Image, name: str = "image") -> Image.Image:
    """A 448 x 448 RGB picture in the training style (see the module docstring)."""
    rgb = np.asarray(to_rgb(img))
    mask, background = part_mask(rgb)
    if mask.sum() < MIN_PART_PIXELS:
        raise InputError(f"{name}: nothing drawn (the image is one flat colour); give a picture of a part")
    if (rgb.shape[:2] == (SIZE, SIZE) and in_training_layout(mask, centred=False)
            and not ((rgb < 250).any(-1) & ~mask).any() and _render_grey(rgb)):
        return Image.fromarray(rgb)  # already a training-style render: unchanged
    layout = in_training_layout(mask)
    grey = _grey(rgb, mask, background)
    h, w = grey.shape
    canvas = Image.new("L", (SIZE, SIZE), 255)
    if layout:
        side = max(h, w)
        square = Image.new("L", (side, side), 255)
        square.paste(Image.fromarray(grey), ((side - w) // 2, (side - h) // 2))
        canvas = _resized(square, (SIZE, SIZE))
        scale = SIZE / side
    else:
        ys, xs = np.nonzero(mask)
        crop = Image.fromarray(grey[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
        scale = min(WINDOW[0] / crop.width, WINDOW[1] / crop.height)
        size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
        crop = _resized(crop, size)
        canvas.paste(crop, ((SIZE - size[0]) // 2, (SIZE - size[1]) // 2))
    return Image.fromarray(restyle(np.asarray(canvas), enlarged=scale > 1))


def _render_grey(rgb: np.ndarray) -> bool:
    """Every pixel in the renderer's greys: red equal to green, blue at most 8 below (the planar
    grey is (141, 141, 138), curved faces shade it)."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    return bool((r == g).all() and ((g - b >= 0) & (g - b <= 8)).all())


def _resized(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``img`` at ``size``: area-averaged when shrunk, bilinear when enlarged (neither rings)."""
    if img.size == size:
        return img
    return img.resize(size, Image.BOX if size[0] < img.width else Image.BILINEAR)


def _levelled(g: np.ndarray) -> np.ndarray:
    """The part's grey levels scaled so that their most common one (in renders, the planar faces')
    is the renderer's planar grey, where less than ``LEVEL_SHARE`` of the part lies within
    ``PLANAR_BAND`` of that grey and at least that share within two levels of the most common one
    (a tinted or darker copy of a render); else as they are."""
    planar = GENCAD_STYLE.face_rgb[0]
    part = g < PART_BELOW
    hist = np.bincount(g[part].ravel(), minlength=256)
    if hist[planar - PLANAR_BAND:planar + PLANAR_BAND + 1].sum() >= LEVEL_SHARE * part.sum():
        return g
    mode = LINE_BELOW + int(np.argmax(hist[LINE_BELOW:PART_BELOW]))
    if hist[mode - 2:mode + 3].sum() < LEVEL_SHARE * part.sum():
        return g
    return np.where(part, np.minimum(np.rint(g * (planar / mode)), PART_BELOW - 1), g).astype(np.int16)


def restyle(grey: np.ndarray, enlarged: bool = False) -> np.ndarray:
    """An (H, W) grey picture of a part on white as an (H, W, 3) render in ``cad.render``'s
    palette: grey levels scaled so that the most common is the planar grey (``_levelled``, where
    it is missing), lines black and one pixel across (the darkest pixel across a dark ridge; in an
    ``enlarged`` picture, joined by the skeleton of its faint continuations: a line resampled up
    fades in places, and a gap would merge the faces on either side; elsewhere that would take in
    a JPEG's ringing beside the lines), the pixels beside a line given their face's grey (the
    nearest pixel off the line and its neighbours), the blend of the outline with the background
    outside it white, and planar faces (``PLANAR_SHARE`` of their pixels within ``PLANAR_BAND`` of
    the planar grey, away from their lines where they have room) in exactly the renderer's planar
    colour. The ten reference renders come back within 10 grey levels but for at most 135 pixels
    each (curved faces lose the blue channel's few levels)."""
    g = _levelled(grey.astype(np.int16))
    part = g < PART_BELOW
    dark = grey_closing(g, size=(5, 5)) - g
    pad = np.pad(dark, 1, mode="edge")
    ridge = ((dark >= pad[1:-1, :-2]) & (dark >= pad[1:-1, 2:])) | ((dark >= pad[:-2, 1:-1]) & (dark >= pad[2:, 1:-1]))
    lines = (g < LINE_BELOW) | (part & (dark > LINE_CONTRAST) & ridge)
    if enlarged:
        lines |= skeletonize(_continued(lines, part & (dark > LINE_FAINT)))
    beside = binary_dilation(lines) & ~lines
    known = part & ~lines & ~beside
    if known.any():
        near = distance_transform_edt(~known, return_distances=False, return_indices=True)
        g = np.where(beside & part, g[near[0], near[1]], g)
    part &= ~(beside & binary_dilation(~part, CROSS))  # the outline's blend with the background
    faces, count = label(part & ~lines)
    planar_grey = GENCAD_STYLE.face_rgb[0]
    off = np.abs(g - planar_grey)
    inner = np.where(distance_transform_edt(part & ~lines) > PLANAR_INNER, faces, 0)
    counted = np.where(np.bincount(inner.ravel(), minlength=count + 1)[faces] >= MIN_INNER, inner, faces)
    share = (np.bincount(counted.ravel(), weights=(off <= PLANAR_BAND).ravel(), minlength=count + 1)
             / np.maximum(np.bincount(counted.ravel(), minlength=count + 1), 1))
    snap = (faces > 0) & (((share[faces] >= PLANAR_SHARE) & (off <= PLANAR_SNAP)) | (off <= FLAT_SNAP))
    out = np.repeat(np.clip(g, 0, 255).astype(np.uint8)[..., None], 3, -1)
    out[snap] = GENCAD_STYLE.face_rgb
    out[~part] = 255
    out[lines] = 0
    return out


def _continued(lines: np.ndarray, faint: np.ndarray) -> np.ndarray:
    """``lines`` with the ``faint`` pixels 8-connected to them (through other faint ones)."""
    parts, _ = label(lines | faint, np.ones((3, 3), bool))
    return np.isin(parts, np.unique(parts[lines])) & (parts > 0)


def load_input(path: str | Path) -> Image.Image:
    """Open and normalise one input file; InputError (one line) for anything unusable."""
    return normalise(open_image(path), str(path))
