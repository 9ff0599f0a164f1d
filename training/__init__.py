"""tuneserve training side: recipes, data, backbones, tasks, the training loop, export and quantisation.

Importing this package is cheap (no torch); the heavy modules import torch themselves.
"""

import os

# Pretrained weights come from installed packages; never reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
