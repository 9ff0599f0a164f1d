"""Pre- and post-processing, shared byte-for-byte by training and serving (numpy / tokenizers only)."""

from serving.processing.postprocess import softmax, top_label
from serving.processing.text import TextBatch, TextPreprocessor

__all__ = ["TextBatch", "TextPreprocessor", "softmax", "top_label"]
