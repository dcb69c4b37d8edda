"""editseg: referring image segmentation from the grounding inside image-editing models.

Quick start::

    from editseg import Segmenter
    seg = Segmenter.from_pretrained("flux2-klein-4b")
    result = seg.segment("photo.jpg", "the zebra on the left")
"""

from .api import DEFAULT_MODEL, SegmentationResult, Segmenter
from .config import MethodConfig
from .errors import EditsegError

__version__ = "0.1.0"
__all__ = ["Segmenter", "SegmentationResult", "MethodConfig", "EditsegError", "DEFAULT_MODEL", "__version__"]
