"""RLFseg training: data sources, SAM label refinement (RDS), the LoRA rectified-flow loop.

``editseg.methods.rlfseg`` (core) holds the inference side and the shared flow math/backbones.
"""

from .config import RLFsegTrainConfig

__all__ = ["RLFsegTrainConfig"]
