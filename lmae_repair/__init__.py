"""lmae-repair: complete broken semantic-segmentation labels with a Label Masked Autoencoder."""

__version__ = "0.1.0"
