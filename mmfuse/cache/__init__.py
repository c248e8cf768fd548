"""Caches that make epochs after the first cheap: preprocessed samples (below the Dataset) and
frozen-encoder outputs (between encoders and fusion). See docs/performance.md.

Modules: ``keys`` (content digests, preprocessor identity), ``shards`` (safetensors shard folders,
atomic and shared by processes), ``samples`` (the sample cache the dataset consults),
``features`` (the frozen-encoder feature store), ``inventory`` (``mmfuse cache info|clear``).
Importing this package imports no torch.
"""
