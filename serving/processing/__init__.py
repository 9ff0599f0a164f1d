"""Pre- and post-processing, shared byte-for-byte by training and serving (numpy / tokenizers only)."""

from serving.processing.image import ImageError, ImagePreprocessor, decode_image
from serving.processing.postprocess import softmax, top_k, top_label
from serving.processing.text import TextBatch, TextPreprocessor

__all__ = ["ImageError", "ImagePreprocessor", "TextBatch", "TextPreprocessor", "decode_image", "softmax", "top_k", "top_label"]
