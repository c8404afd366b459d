"""Data: sources -> seeded splits -> torch datasets."""

from .datasets import NoisedDataset, TwoViews, normalize, to_tensor, to_uint8
from .sources import DataError, ImageSet, Source, load_source
from .splits import Splits, make_splits

__all__ = ["DataError", "ImageSet", "NoisedDataset", "Source", "Splits", "TwoViews",
           "load_source", "make_splits", "normalize", "to_tensor", "to_uint8"]
