"""A stand-in for tensorflow, for HEAR's hearvalidator and heareval with torch models (tests only).

Both import tensorflow at module top; with a torch model they only test `isinstance(model, tf.Module)` (False) and,
where torch sees a GPU, call `tf.test.is_gpu_available` to check that TensorFlow agrees. There is no TensorFlow
model here, so agreeing is vacuous. Put tests/stubs on PYTHONPATH only for processes that run those tools.
"""
from types import SimpleNamespace


class Module:
    """Nothing is a tf.Module here."""


test = SimpleNamespace(is_gpu_available=lambda *args, **kwargs: True)
