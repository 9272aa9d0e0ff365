"""A many-class set of real images made offline: characters rendered in the fonts that Debian font
packages install, with small seeded augmentations (synthetic renderings, not photographs).

Why: the paper's large gains sit where classes far outnumber a head's neurons (CIFAR-100, ImageNet),
and no such image set ships offline. 62 classes (digits, upper- and lower-case letters) in some
hundred fonts give real images of many classes, which the frozen encoder then turns into features
(``font-chars-efficientnet`` in :mod:`torchfpe.data.features`), or which ``torchfpe embed`` reads once
written as an image folder (:func:`write_font_chars_folder`).

Recipe (:class:`FontCharsConfig`; all random draws from ``numpy.random.default_rng(seed)``):

- fonts: every ``.ttf``/``.otf`` file under ``font_dirs`` (default ``/usr/share/fonts``), deduplicated
  by content and by (family, style) name, keeping only fonts that draw every character of the set
  (a character drawn as the font's "missing glyph" box, or blank, or two characters drawn alike, drop
  the font), and leaving out the few families whose letters are symbols (:data:`EXCLUDED_FAMILIES`);
- rendering: ``size`` x ``size`` grayscale, dark glyph (0) on a light background (255); the point size
  makes each font's capital "H" ``cap_height`` of the image high, the baseline sits so that capitals
  are centred, so lower case stays smaller and lower (``c`` and ``C`` differ by size, as in print);
- augmentation of every image: rotation uniform in +-``rotation`` degrees, scale uniform in
  1 +- ``scale``, shift uniform in +-``shift`` pixels in x and y (bilinear);
- split: every (font, character) pair appears ``train_augmentations`` times in train and
  ``test_augmentations`` times in test, each time with fresh augmentation draws: the test set holds
  new renderings of the same fonts, not held-out fonts (several Debian fonts are near-copies of one
  design, e.g. URW Nimbus Sans and GNU FreeSans, so a held-out-font split would leak anyway);
- order: each split shuffled with the seed, so that its first N images are a random subset.
"""

from __future__ import annotations

import hashlib
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .embeddings import DataError
from .idx import ImageSet

#: The character sets by name: class names (safe as folder names on any file system) and characters.
CHARSETS: dict[str, tuple[str, ...]] = {
    "digits+letters": tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase),  # 62 classes
    "digits+upper": tuple(string.digits + string.ascii_uppercase),  # 36 classes
}
DEFAULT_FONT_DIRS = ("/usr/share/fonts",)
FONT_SUFFIXES = (".ttf", ".otf")
MISSING_GLYPH = "\U0010fffd"  # a private-use code point no text font maps: it draws the font's .notdef box
#: Debian packages of Latin text fonts that give the set its variety (`.ci/run` installs them).
FONT_PACKAGES = ("fonts-dejavu-core", "fonts-dejavu-extra", "fonts-liberation", "fonts-freefont-ttf",
                 "fonts-urw-base35", "fonts-crosextra-carlito", "fonts-crosextra-caladea", "fonts-open-sans",
                 "fonts-lato", "fonts-go", "fonts-linuxlibertine", "fonts-inconsolata", "fonts-cantarell",
                 "fonts-roboto-unhinted", "fonts-sil-gentium")
MIN_FONTS = 2
#: Font families left out although they pass the glyph checks: their ASCII code points draw symbols
#: (URW's clones of Zapf Dingbats and Symbol: "A" is a star of David or a Greek capital alpha), or every
#: letter inside a key cap (Linux Biolinum's keyboard font).
EXCLUDED_FAMILIES = ("D050000L", "Standard Symbols PS", "Linux Biolinum Keyboard O")


def class_name(char: str) -> str:
    """``digit-0``, ``upper-A``, ``lower-a``: distinct folder names even where file names ignore case."""
    kind = "digit" if char.isdigit() else "upper" if char.isupper() else "lower"
    return f"{kind}-{char}"


@dataclass(frozen=True)
class FontCharsConfig:
    """The recipe of the font-character set (see the module docstring)."""

    charset: str = "digits+letters"
    size: int = 64
    cap_height: float = 0.5
    rotation: float = 10.0
    scale: float = 0.15
    shift: float = 4.0
    train_augmentations: int = 2
    test_augmentations: int = 1
    seed: int = 0
    font_dirs: tuple[str, ...] = field(default=DEFAULT_FONT_DIRS)

    def __post_init__(self):
        from ..core.validation import InvalidParameterError

        def bad(name: str, what: str):
            return InvalidParameterError(f"FontCharsConfig.{name} must be {what}; got {getattr(self, name)!r}")

        if self.charset not in CHARSETS:
            raise bad("charset", f"one of {', '.join(CHARSETS)}")
        for name, low in (("size", 16), ("train_augmentations", 1), ("test_augmentations", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(name, f"an int >= {low}")
        for name, low, high in (("cap_height", 0.1, 0.8), ("rotation", 0.0, 45.0), ("scale", 0.0, 0.5),
                                ("shift", 0.0, self.size / 4 if isinstance(self.size, int) else 0.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise bad(name, f"a number in [{low}, {high}]")
        if isinstance(self.font_dirs, (str, os.PathLike)) or not all(isinstance(d, (str, os.PathLike)) for d in self.font_dirs):
            raise bad("font_dirs", "a tuple of folder paths")
        object.__setattr__(self, "font_dirs", tuple(str(d) for d in self.font_dirs))

    @property
    def chars(self) -> tuple[str, ...]:
        return CHARSETS[self.charset]


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise ImportError("rendering font characters needs pillow: pip install 'torchfpe[efficientnet]'") from None
    return Image, ImageDraw, ImageFont


def font_files(font_dirs: Sequence[str | os.PathLike] = DEFAULT_FONT_DIRS) -> list[Path]:
    """Every ``.ttf``/``.otf`` file under the folders, sorted (no font is opened)."""
    files = []
    for folder in font_dirs:
        root = Path(folder)
        if root.is_dir():
            files += [p for p in root.rglob("*") if p.suffix.lower() in FONT_SUFFIXES and p.is_file()]
    return sorted(set(files))


def fonts_fingerprint(config: FontCharsConfig) -> str:
    """A hash of the font files that :func:`usable_fonts` would look at (names and sizes; cheap)."""
    digest = hashlib.sha256()
    for path in font_files(config.font_dirs):
        digest.update(f"{path}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def _draw(font, char: str, config: FontCharsConfig, *, dx: float = 0.0, dy: float = 0.0, angle: float = 0.0,
          baseline: float | None = None) -> np.ndarray:
    Image, ImageDraw, _ = _pil()
    size = config.size
    image = Image.new("L", (size, size), 255)
    ImageDraw.Draw(image).text((size / 2 + dx, (baseline if baseline is not None else size * 0.75) + dy), char,
                               font=font, fill=0, anchor="ms")
    if angle:
        image = image.rotate(angle, resample=Image.BILINEAR, fillcolor=255)
    return np.asarray(image)


def _sized_font(path: Path, config: FontCharsConfig, scale: float = 1.0, cache: dict | None = None):
    """The font at the point size that makes its capital H ``cap_height * size * scale`` pixels high
    (None if its H has no height); ``cache`` keeps loaded fonts and H heights across calls."""
    _, _, ImageFont = _pil()
    cache = {} if cache is None else cache
    if (path, "H") not in cache:
        box = ImageFont.truetype(str(path), size=100).getbbox("H", anchor="ls")
        cache[(path, "H")] = box[3] - box[1]  # the H's height at 100 points
    height = cache[(path, "H")]
    if height <= 0:
        return None
    points = max(4, round(100 * config.cap_height * config.size * scale / height))
    if (path, points) not in cache:
        cache[(path, points)] = ImageFont.truetype(str(path), size=points)
    return cache[(path, points)]


def usable_fonts(config: FontCharsConfig) -> list[Path]:
    """The fonts of the set: deduplicated, each drawing every character distinctly (see the module docstring)."""
    _pil()
    seen_bytes, seen_names, fonts = set(), set(), []
    for path in font_files(config.font_dirs):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            font = _sized_font(path, config)
            name = font.getname() if font is not None else None
        except OSError:  # not a font FreeType can read
            continue
        if font is None or digest in seen_bytes or name in seen_names or name[0] in EXCLUDED_FAMILIES:
            continue
        missing = _draw(font, MISSING_GLYPH, config).tobytes()
        glyphs = [_draw(font, char, config) for char in config.chars]
        if any(g.min() == 255 or g.tobytes() == missing for g in glyphs):
            continue  # a character it does not draw
        if len({g.tobytes() for g in glyphs}) < len(glyphs):
            continue  # two characters drawn alike (small caps, symbol fonts): labels it cannot tell apart
        seen_bytes.add(digest)
        seen_names.add(name)
        fonts.append(path)
    return fonts


def render_font_chars(config: FontCharsConfig | None = None, *, progress=None) -> ImageSet:
    """The image set: uint8 (N, size, size) images and int64 labels (index into the charset).
    ``progress``: a display (:func:`torchfpe.data.encode.progress_bar`) to show the rendering on, or None."""
    config = config or FontCharsConfig()
    fonts = usable_fonts(config)
    if len(fonts) < MIN_FONTS:
        raise DataError(f"font-chars: found {len(fonts)} usable fonts under {', '.join(config.font_dirs)}; needs at "
                        f"least {MIN_FONTS} (install Debian font packages, e.g. apt-get install "
                        f"{' '.join(FONT_PACKAGES[:4])})")
    rng = np.random.default_rng(config.seed)
    chars = config.chars
    cache: dict = {}
    splits = {}
    task = progress.add_task(f"rendering {len(chars)} characters in {len(fonts)} fonts", total=2 * len(fonts)) \
        if progress else None
    for split, copies in (("train", config.train_augmentations), ("test", config.test_augmentations)):
        images, labels = [], []
        for path in fonts:
            if progress:
                progress.advance(task, 1)
            for _ in range(copies):
                for label, char in enumerate(chars):
                    angle, scale = rng.uniform(-config.rotation, config.rotation), 1 + rng.uniform(-config.scale, config.scale)
                    dx, dy = rng.uniform(-config.shift, config.shift, size=2)
                    font = _sized_font(path, config, scale, cache)
                    # the baseline moves with the scale so that capitals stay centred before the shift
                    baseline = config.size / 2 + config.cap_height * config.size * scale / 2
                    images.append(_draw(font, char, config, dx=dx, dy=dy, angle=angle, baseline=baseline))
                    labels.append(label)
        order = rng.permutation(len(labels))
        splits[split] = (torch.from_numpy(np.stack(images)[order]), torch.from_numpy(np.asarray(labels, np.int64)[order]))
    names = [class_name(c) for c in chars]
    return ImageSet(
        x_train=splits["train"][0], y_train=splits["train"][1], x_test=splits["test"][0], y_test=splits["test"][1],
        class_names=names, name=f"{len(chars)} characters rendered in {len(fonts)} fonts (synthetic renderings)",
        standin=False,
        note=(f"{len(chars)} characters ({config.charset}) rendered {config.size} px in {len(fonts)} fonts found under "
              f"{', '.join(config.font_dirs)}, rotation +-{config.rotation} deg, scale 1 +- {config.scale}, shift "
              f"+-{config.shift} px, seed {config.seed}; {config.train_augmentations} train and "
              f"{config.test_augmentations} test renderings per font and character (the same fonts in both)"),
    )


def write_font_chars_folder(out: str | os.PathLike, config: FontCharsConfig | None = None) -> Path:
    """The set as an image folder (``out/train/<class>/``, ``out/test/<class>/``) for ``torchfpe embed``."""
    from .folders import export_image_folder

    return export_image_folder(render_font_chars(config), out)
