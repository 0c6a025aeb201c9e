"""The two extraction protocols, ``clean`` (default) and ``paper``: their names, options and pixel range.

What each protocol does to the latents is the model family's (for SD-1.x/2.x see
:mod:`sdaudit.models.families.sd_noise`, which lists the published code's quirks that ``paper``
reproduces and ``clean`` fixes). Shared by every family: ``paper`` feeds the VAE pixels in [0, 1]
(``/255``) as the published code did, ``clean`` in the [-1, 1] the VAE was trained on.
"""

from __future__ import annotations

import numpy as np
import torch


def pixels_to_tensor(images, protocol: str) -> torch.Tensor:
    """(B, 3, H, W) float32 from equally sized RGB PIL images: [0, 1] for ``paper``, [-1, 1] for ``clean``."""
    array = np.stack([np.asarray(img.convert("RGB"), dtype=np.uint8) for img in images])
    x = torch.from_numpy(array).permute(0, 3, 1, 2).float()
    return x / 255.0 if protocol == "paper" else x / 127.5 - 1.0
