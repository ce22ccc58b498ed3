"""A teaching example of a ScanStream model plugin: ``example-bright-spots``.

It is NOT a medical model and was never trained: a 3x3 averaging convolution
whose weights are set in code marks CT voxels whose neighbourhood averages
above :data:`~scanstream_example.network.THRESHOLD_HU` (bone, calcium,
contrast, metal). It exists to show every piece a real model plugin has:
registration (:mod:`scanstream_example.plugin`), the network
(:mod:`scanstream_example.network`), pre/postprocessing
(:mod:`scanstream_example.handler`) and tests with ScanStream's pytest fixtures.
"""

MODEL_NAME = "example-bright-spots"
MODEL_VERSION = "0.1.0"
