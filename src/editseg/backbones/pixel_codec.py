"""A pixel-space codec for the toy editor, with the interface ``Flux2KleinPipeline`` uses of its VAE.

The pipeline reads ``vae.encode(x).latent_dist.mode()``, ``vae.bn`` running statistics (to
standardise patchified latents), ``vae.config.block_out_channels`` (only its length: the
downscale factor is ``2 ** (len - 1)``), ``vae.config.batch_norm_eps`` and ``vae.decode``.
``PixelCodec`` gives all of these with no learned weights: the "latents" of an image are its
pixels in [-1, 1] folded space-to-depth by ``downscale`` (so ``latent_channels = 3 * downscale**2``),
and decoding unfolds them. A local, exact, invertible codec means that removing one shape changes
only the tokens that cover it, which a random convolutional encoder does not give (its
normalisation layers and attention spread a local change over the whole latent image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' loader looks it up here)
from torch import nn
from torch.nn import functional as F


@dataclass
class _Mode:
    """The ``latent_dist`` of a deterministic encoder: its mode is the latent itself."""

    value: torch.Tensor

    def mode(self) -> torch.Tensor:
        return self.value

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.value


@dataclass
class PixelCodecOutput:
    latent_dist: _Mode


class PixelCodec(ModelMixin, ConfigMixin):
    """Pixels folded space-to-depth; ``bn`` holds the standardisation statistics of the
    pipeline's 2x2-patchified latents (``4 * latent_channels`` channels)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, downscale: int = 2, in_channels: int = 3, batch_norm_eps: float = 1e-4,
                 block_out_channels: tuple[int, ...] | None = None):
        super().__init__()
        if downscale < 1 or downscale & (downscale - 1):
            raise ValueError("downscale must be a power of two")
        levels = downscale.bit_length()  # the pipeline's scale factor is 2 ** (levels - 1)
        expected = tuple([in_channels * downscale**2] * levels)
        if block_out_channels is not None and tuple(block_out_channels) != expected:
            raise ValueError(f"block_out_channels must be {expected} for downscale {downscale}")
        self.register_to_config(block_out_channels=expected)
        self.latent_channels = in_channels * downscale**2
        self.bn = nn.BatchNorm2d(4 * self.latent_channels, eps=batch_norm_eps, affine=False, track_running_stats=True)
        self.bn.eval()

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> PixelCodecOutput | tuple[_Mode]:
        """(B, 3, H, W) in [-1, 1] → (B, 3·s², H/s, W/s)."""
        latents = F.pixel_unshuffle(x, self.config.downscale)
        return PixelCodecOutput(_Mode(latents)) if return_dict else (_Mode(latents),)

    def decode(self, z: torch.Tensor, return_dict: bool = True, **_) -> DecoderOutput | tuple[torch.Tensor]:
        """Inverse of :meth:`encode` (the pipeline calls ``decode(latents, return_dict=False)[0]``)."""
        image = F.pixel_shuffle(z, self.config.downscale)
        return DecoderOutput(sample=image) if return_dict else (image,)
