"""editseg: referring image segmentation from the grounding inside image-editing models."""

__version__ = "0.1.0"
