"""Small bad or unusual image files with deterministic content: fixtures of the image reader's tests."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
from PIL import Image

from .images import PathLike

__all__ = ["write_bad_images"]


def _write_broken(out: Path) -> Dict[str, Path]:
    """The files that are no image: empty, truncated (half a valid PNG) and plain text."""
    paths = {"empty": out / "empty.jpg"}
    paths["empty"].write_bytes(b"")

    rng = np.random.Generator(np.random.PCG64(12345))
    noisy = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    full = out / "full_for_truncation.png"
    Image.fromarray(noisy, "RGB").save(full, format="PNG", compress_level=1)
    data = full.read_bytes()
    full.unlink()
    paths["truncated"] = out / "truncated.png"
    paths["truncated"].write_bytes(data[: len(data) // 2])

    paths["not_image"] = out / "not_an_image.jpg"
    paths["not_image"].write_text("this is plain text, not a JPEG\n", encoding="utf-8")
    return paths


def _write_modes(out: Path) -> Dict[str, Path]:
    """Valid PNGs in the PIL modes the reader converts: "L", "RGBA", "P" and 16-bit "I;16"."""
    paths: Dict[str, Path] = {}
    gray = np.tile((np.arange(32, dtype=np.uint8) * 8)[None, :], (24, 1))
    paths["gray"] = out / "gray.png"
    Image.fromarray(gray, "L").save(paths["gray"], format="PNG")

    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[:, :8] = (10, 20, 30, 0)
    rgba[:, 8:] = (200, 100, 50, 128)
    paths["rgba"] = out / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(paths["rgba"], format="PNG")

    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    pal_idx = np.zeros((16, 16), dtype=np.uint8)
    pal_idx[:, 8:] = 1
    pal.frombytes(pal_idx.tobytes())
    paths["palette"] = out / "palette.png"
    pal.save(paths["palette"], format="PNG")

    g16 = np.array([[0, 100, 255, 256, 1000, 65535]], dtype=np.uint16)
    paths["gray16"] = out / "gray16.png"
    Image.fromarray(g16).save(paths["gray16"], format="PNG")
    return paths


def _write_exif_rotated(path: Path) -> Path:
    """A 40 x 60 JPEG of four coloured quadrants with EXIF orientation 6, at ``path``."""
    quad = np.zeros((40, 60, 3), dtype=np.uint8)
    quad[:20, :30] = (255, 0, 0)
    quad[:20, 30:] = (0, 255, 0)
    quad[20:, :30] = (0, 0, 255)
    quad[20:, 30:] = (255, 255, 255)
    exif = Image.Exif()
    exif[274] = 6
    Image.fromarray(quad, "RGB").save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def write_bad_images(out_dir: PathLike) -> Dict[str, Path]:
    """Write small bad or unusual image files (deterministic content) into ``out_dir``.

    Returns a dict name -> path:

    * ``missing``: ``does_not_exist.jpg`` (not created).
    * ``empty``: 0-byte ``empty.jpg``.
    * ``truncated``: ``truncated.png``, the first half of a valid 64x48 noisy RGB PNG.
    * ``not_image``: ``not_an_image.jpg``, a text file.
    * ``gray``: ``gray.png``, mode "L", 24x32, pixel (y, x) = 8 * x (0..248).
    * ``rgba``: ``rgba.png``, mode "RGBA", 16x16: colour (10, 20, 30) with alpha 0 on the
      left half, (200, 100, 50) with alpha 128 on the right half.
    * ``palette``: ``palette.png``, mode "P", 16x16, left half palette colour (255, 0, 0),
      right half (0, 0, 255).
    * ``gray16``: ``gray16.png``, 16-bit ("I;16"), 1x6 values [0, 100, 255, 256, 1000, 65535].
    * ``exif_rotated``: ``exif_rotated.jpg``, stored 40 (H) x 60 (W) with quadrants
      top-left red, top-right green, bottom-left blue, bottom-right white and EXIF
      orientation 6; viewed upright it is 60 x 40 with top-left blue, top-right red,
      bottom-left white, bottom-right green (JPEG: compare with a tolerance).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, Path] = {"missing": out / "does_not_exist.jpg"}
    paths.update(_write_broken(out))
    paths.update(_write_modes(out))
    paths["exif_rotated"] = _write_exif_rotated(out / "exif_rotated.jpg")
    return paths
