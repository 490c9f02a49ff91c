"""KE's data sets (digits-small, ImageFolder), shared with DSD: defined in
``fastsmall.methods.common.image_data`` and re-exported here under their old path."""
from ..common.image_data import FolderImages, TensorImages, digits_small, image_folder, load_data

__all__ = ["FolderImages", "TensorImages", "digits_small", "image_folder", "load_data"]
