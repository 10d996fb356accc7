"""Models: the segmenter protocol, the loader for ``--model``, and the built-in backends.

Only this subpackage imports torch, and only when a torch model is loaded.
"""

from geoseg.model.protocol import Instances, Segmenter, describe_model, load_segmenter

__all__ = ["Instances", "Segmenter", "describe_model", "load_segmenter"]
