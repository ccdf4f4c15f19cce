"""Image augmentation in plain torch (no torchvision): random resized crop, horizontal flip and
colour jitter, each drawn per image from the batch's own ``np.random.Generator``, so a run (and
a resumed one) draws the same augmented batches. Strength 0 turns each off.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["augment_images"]

_RATIO = (3 / 4, 4 / 3)  # aspect ratios of a random crop (torchvision's default)


def augment_images(x: torch.Tensor, rng: np.random.Generator, crop_scale: float, hflip: float,
                   color_jitter: float) -> torch.Tensor:
    """Augment a batch of images ``[batch, 3, H, W]`` with pixels in [0, 1].

    Args:
        crop_scale: random resized crop: each image is cut to between ``1 - crop_scale`` of
            its area and all of it (aspect ratio 3/4..4/3, anywhere inside), and resized back.
        hflip: probability of a horizontal flip.
        color_jitter: brightness, contrast and saturation each scaled by a factor drawn from
            ``[1 - color_jitter, 1 + color_jitter]``.
    """
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    if crop_scale > 0 or hflip > 0:
        area = rng.uniform(1.0 - crop_scale, 1.0, b) if crop_scale > 0 else np.ones(b)
        ratio = (np.exp(rng.uniform(math.log(_RATIO[0]), math.log(_RATIO[1]), b))
                 if crop_scale > 0 else np.ones(b))
        w = np.minimum(np.sqrt(area * ratio), 1.0)  # crop side as a share of the image side
        h = np.minimum(np.sqrt(area / ratio), 1.0)
        cx = rng.uniform(-1.0, 1.0, b) * (1.0 - w)  # centre, in [-1, 1] coordinates
        cy = rng.uniform(-1.0, 1.0, b) * (1.0 - h)
        flip = np.where(rng.random(b) < hflip, -1.0, 1.0) if hflip > 0 else np.ones(b)
        theta = np.zeros((b, 2, 3))
        theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        t = torch.as_tensor(theta, dtype=x.dtype, device=x.device)
        grid = F.affine_grid(t, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if color_jitter > 0:
        s = color_jitter
        factors = torch.as_tensor(rng.uniform(max(0.0, 1 - s), 1 + s, (3, b)), dtype=x.dtype,
                                  device=x.device).view(3, b, 1, 1, 1)
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = x * factors[0]  # brightness
        grey = (x * weights).sum(1, keepdim=True)
        x = (x - grey.mean((2, 3), keepdim=True)) * factors[1] + grey.mean((2, 3), keepdim=True)
        grey = (x * weights).sum(1, keepdim=True)
        x = (x - grey) * factors[2] + grey  # saturation
        x = x.clamp(0.0, 1.0)
    return x
