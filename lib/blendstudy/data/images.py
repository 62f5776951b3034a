"""Image reading with detectron2's ``read_image`` semantics, and image-file discovery.

The reader mirrors ``detectron2.data.detection_utils.read_image`` (PIL based): the EXIF
orientation tag is applied first, then the image is converted with PIL to ``"RGB"`` and,
for ``format="BGR"``, the channel order is reversed.  Unlike detectron2 the whole file is
decoded inside the reader, so a broken file fails here with :class:`ImageReadError` (one
line, ``"<path>: <problem>"``) instead of somewhere later in a pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "list_images", "read_image"]

PathLike = Union[str, Path]

#: File-name suffixes (lower case) that :func:`list_images` picks up when expanding a folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# EXIF "Orientation" tag (0x0112) and the PIL transpose that undoes each value, as detectron2 does.
_EXIF_ORIENTATION_TAG = 274
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageReadError(ValueError):
    """An image file could not be found or decoded.

    ``str(err)`` is a single line ``"<path>: <problem>"``; the parts are kept in the
    attributes ``path`` (str) and ``problem`` (str).
    """

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # force a single line
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self):  # keep picklable (e.g. across DataLoader workers)
        return (type(self), (self.path, self.problem))


def _exif_orientation(image: Image.Image) -> int:
    """Return the EXIF orientation value of ``image`` (1..8), or 0 when absent/unreadable."""
    if not hasattr(image, "getexif"):
        return 0
    try:
        exif = image.getexif()
    except Exception:  # detectron2 also ignores unreadable EXIF blocks
        return 0
    if exif is None:
        return 0
    value = exif.get(_EXIF_ORIENTATION_TAG)
    return value if isinstance(value, int) else 0


def _describe(exc: BaseException) -> str:
    """One-line ``"Type: message"`` description of a decoding exception."""
    text = str(exc).strip() or "no details"
    return f"{type(exc).__name__}: {text}"


def _check_file(path: PathLike) -> Path:
    """``path`` as a Path, after checking that it is a regular, non-empty file (ImageReadError if not)."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(path, "no such file")
    if not p.is_file():
        raise ImageReadError(path, "not a regular file (a directory?)")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ImageReadError(path, f"cannot stat file ({_describe(exc)})") from exc
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    return p


def _decode_rgb(path: PathLike, p: Path) -> Tuple[Image.Image, str]:
    """Open and fully decode ``p``, undo its EXIF orientation and convert it to "RGB".

    Returns the RGB image and the mode it was stored in; every failure is an ImageReadError
    naming ``path``.
    """
    try:
        with open(p, "rb") as f:
            try:
                image = Image.open(f)
            except UnidentifiedImageError as exc:
                raise ImageReadError(path, "not a recognised image format (PIL cannot identify it)") from exc
            with image:
                orientation = _exif_orientation(image)  # detectron2 reads EXIF before decoding
                try:
                    image.load()  # decode everything now: truncated data fails here
                except (OSError, SyntaxError, EOFError, ValueError, IndexError) as exc:
                    raise ImageReadError(
                        path, f"truncated or corrupt {image.format or ''} image ({_describe(exc)})"
                    ) from exc
                method = _EXIF_TRANSPOSE.get(orientation)
                oriented = image.transpose(method) if method is not None else image
                mode = oriented.mode
                try:
                    rgb = oriented.convert("RGB")
                except (ValueError, OSError) as exc:
                    raise ImageReadError(path, f"unsupported image mode {mode!r} ({_describe(exc)})") from exc
    except ImageReadError:
        raise
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file ({_describe(exc)})") from exc
    except Exception as exc:  # any other PIL decoder failure
        raise ImageReadError(path, f"cannot decode image ({_describe(exc)})") from exc
    return rgb, mode


def read_image(path: PathLike, format: str = "BGR") -> np.ndarray:
    """Read an image file the way detectron2's ``read_image(path, format)`` does.

    Steps: open with PIL, read the EXIF orientation tag and undo it (orientation 6, "rotate
    90 CW to view", gives a image whose height and width are swapped, turned 90 degrees
    clockwise; 2..8 follow the EXIF spec exactly like detectron2's ``_apply_exif_orientation``),
    decode every byte, convert with ``PIL.Image.convert("RGB")`` and, for ``"BGR"``, reverse
    the channel order.  Consequences of that PIL conversion (identical in detectron2):

    * ``"L"`` (grayscale), ``"1"`` (bilevel: 0 or 255) -> the value copied to all 3 channels.
    * ``"P"`` (palette) -> palette colours; palette transparency is dropped.
    * ``"RGBA"`` / ``"LA"`` / ``"PA"`` -> alpha is *discarded*, not composited: a fully
      transparent pixel keeps its stored colour.
    * ``"CMYK"`` / ``"YCbCr"`` / ``"LAB"`` -> PIL's own colour conversion.
    * 16-bit grayscale PNG (``"I;16"``) and 32-bit ``"I"`` -> values are *clipped* to
      0..255, not rescaled (1000 -> 255, 100 -> 100, negatives -> 0).  ``"F"`` is clipped too.
    * 16-bit-per-channel RGB PNGs are opened by PIL as 8-bit ``"RGB"`` already.

    Args:
        path: image file.
        format: ``"BGR"`` (default, detectron2/BlendMask convention) or ``"RGB"``.

    Returns:
        ``(H, W, 3)`` uint8 C-contiguous array of 0..255 intensities in ``format`` channel
        order, H and W in pixels after the EXIF transpose.

    Raises:
        ImageReadError: missing path, a folder, empty file, not an image, truncated or
            corrupt data, or a mode PIL cannot convert to RGB.  The message names ``path``.
        ValueError: ``format`` is not ``"BGR"`` or ``"RGB"``.

    Note:
        Truncation is only detected while ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is False
        (PIL's default); when some other code sets it to True, PIL pads truncated files.
    """
    if format not in ("BGR", "RGB"):
        raise ValueError(f"format must be 'BGR' or 'RGB', got {format!r}")
    rgb, mode = _decode_rgb(path, _check_file(path))
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:  # defensive: PIL "RGB" is always HxWx3
        raise ImageReadError(path, f"unexpected decoded shape {array.shape} from mode {mode!r}")
    if format == "BGR":
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array)


def list_images(inputs: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    """Expand files and folders into a list of image files.

    * A path naming a file is kept as given, whatever its suffix (reading reports bad ones).
    * A folder is replaced, in place, by its direct children (non-recursive) whose suffix is
      in :data:`IMAGE_EXTENSIONS` (case-insensitive), sorted by name; hidden files
      (``.name``) are skipped.
    * Input order is kept; duplicates are not removed.

    Args:
        inputs: one path or a sequence of paths (str or Path).

    Returns:
        List of ``Path`` objects (not resolved), possibly empty for empty folders.

    Raises:
        ImageReadError: an input path does not exist (the message names it).
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    result: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            children = [
                c for c in p.iterdir()
                if c.is_file() and not c.name.startswith(".") and c.suffix.lower() in IMAGE_EXTENSIONS
            ]
            result.extend(sorted(children, key=lambda c: c.name))
        elif p.exists():
            result.append(p)
        else:
            raise ImageReadError(item, "no such file or directory")
    return result
