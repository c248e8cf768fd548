"""Preprocessors shared by several encoder families (image files, waveforms, log-mel
spectrograms), in the core so that plugin families never import each other: ``image_timm``,
``video`` and ``small`` read images through :mod:`.image`; ``audio`` and ``small`` read audio
through :mod:`.waveform` and :mod:`.mel`. Each runs in DataLoader workers (CPU only)."""
