"""Image sources for sdaudit: loading, validation, conversion to 8-bit RGB, and the demo set.

Every image that enters sdaudit goes through :func:`load_image` (files) or
:func:`decode_dataset_value` (``datasets`` items), which either return an :class:`ImageRecord`
holding an 8-bit RGB ``PIL.Image`` at its original size, or raise :class:`BadImageError`
naming the source and the reason. Cropping and resizing happen later, in :func:`prepare_image`.

The package, one concern per module:

* :mod:`~sdaudit.images.records`: :class:`ImageRecord`, :class:`BadImageError`, extensions and defaults;
* :mod:`~sdaudit.images.convert`: any Pillow mode to 8-bit RGB (the rules), and the content hash;
* :mod:`~sdaudit.images.decode`: validation of one file or ``datasets`` cell, in the documented order;
* :mod:`~sdaudit.images.folders`: folder scans, list files, audit output folders, ``save_to_disk`` folders;
* :mod:`~sdaudit.images.hf`: Hugging Face ``datasets`` sources;
* :mod:`~sdaudit.images.sources`: every source as one lazy stream (:func:`iter_images`);
* :mod:`~sdaudit.images.prepare`: centre crop and resize to the model's input;
* :mod:`~sdaudit.images.demo`: the bundled demo set.
"""

from __future__ import annotations

from .convert import pixel_sha256, to_rgb
from .decode import decode_dataset_value, load_image
from .demo import DEMO_IMAGE_NAMES, demo_image_paths
from .folders import is_saved_dataset, is_sdaudit_output, scan_folder
from .hf import DatasetSource, open_dataset_source
from .prepare import center_crop_square, prepare_image
from .records import (DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, IMAGE_EXTENSIONS, OTHER_IMAGE_EXTENSIONS, BadImageError,
                      ImageRecord, ImageSourceError, printable_path)
from .sources import count_images, iter_images

__all__ = [
    "BadImageError",
    "ImageSourceError",
    "ImageRecord",
    "DatasetSource",
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "DEMO_IMAGE_NAMES",
    "load_image",
    "decode_dataset_value",
    "to_rgb",
    "pixel_sha256",
    "printable_path",
    "iter_images",
    "count_images",
    "scan_folder",
    "is_sdaudit_output",
    "OTHER_IMAGE_EXTENSIONS",
    "open_dataset_source",
    "is_saved_dataset",
    "center_crop_square",
    "prepare_image",
    "demo_image_paths",
]
