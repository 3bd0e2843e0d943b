"""Synthetic HanCo and FreiHAND data in the real on-disk formats (``contra synth``).

:func:`generate` is the entry point; :mod:`~contra.data.synth.render` is the NumPy rasteriser.
Importing this package does not import torch (worker processes stay light).
"""

from contra.data.synth.generate import SynthConfig, generate

__all__ = ["SynthConfig", "generate"]
