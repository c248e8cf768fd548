"""Glue for the backbone libraries that several encoder families share, in one home.

- :mod:`mmfuse.backbones.hf`: transformers models (loading by hub name or local folder with errors
  that say what to do offline, layer groups, activation checkpointing, token pooling).
- :mod:`mmfuse.backbones.timm_models`: timm models (creation by name with did-you-mean, layer
  groups, token/pooled features, the config overrides that rebuild one offline).
- :mod:`mmfuse.backbones.image_settings`: image preprocessing settings (the recipe's overrides,
  resolved against a timm model's data config) and the eval transform they give.

Encoder plugins, built-in or third-party, import from here; a plugin family never imports another
family's modules. This package imports nothing heavy itself: each module imports its library.
"""
