"""The bundled demo set: colour photographs shipped inside scikit-image's package data (no download)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The bundled demo set: colour photographs shipped inside scikit-image's package data.
DEMO_IMAGE_NAMES = (
    "astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
    "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg",
)


def _skimage_data_dir() -> Path:
    """scikit-image's bundled data folder (via importlib.resources, else skimage.data.data_dir)."""
    try:
        return Path(str(resources.files("skimage.data")))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - unusual installs
        import skimage.data

        return Path(skimage.data.data_dir)


def demo_image_paths() -> list[Path]:
    """Paths of the bundled demo set (:data:`DEMO_IMAGE_NAMES`, all RGB photos), sorted by name.

    Raises FileNotFoundError naming any image missing from the scikit-image installation.
    """
    root = _skimage_data_dir()
    paths = [root / name for name in DEMO_IMAGE_NAMES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"demo images missing from scikit-image's data folder {root}: "
                                f"{', '.join(missing)} (reinstall scikit-image)")
    return sorted(paths, key=lambda p: p.name)
