"""The built-in PyTorch trainer: datasets, models, splits, config generation.

Importing this package imports neither torch nor ray; the submodules import
them inside functions.

- :mod:`~raysweep.trainers.split`: stratified folds (``raysweep split``)
- :mod:`~raysweep.trainers.data`: Pillow decoding, the per-node cache, batches
- :mod:`~raysweep.trainers.models`: simple_cnn, tiny_net, mlp, torchvision by name
- :mod:`~raysweep.trainers.engine`: one fold's epoch step and state
- :mod:`~raysweep.trainers.builtin`: ``train(config)``, the default trainable
- :mod:`~raysweep.trainers.standalone`: ``raysweep train`` and its run directory
- :mod:`~raysweep.trainers.cv`: cross-validation trials, one Ray actor per fold
- :mod:`~raysweep.trainers.init_config`: ``raysweep init``
- :mod:`~raysweep.trainers.demo`: the digits demo data
"""
from __future__ import annotations

__all__: list[str] = []
