"""The embedded demo: ``mmfuse demo`` writes a small real multimodal dataset (text, PNG images,
WAV audio, MP4 video) and tiny local model folders, trains ``recipes/demo.yaml`` on it, and
prints single-modality and fused validation results.

The label is the *alert level* of a scene: how many of four cues say "alert" — a red (not blue)
image, a high (not low) tone, the word "alarm" (not "calm") in the text, a green (not grey)
square moving through the video. 0-1 cues: ``low``; 2: ``medium``; 3-4: ``high``. One modality
alone sees one cue and cannot do better than about 50% accuracy; all four together give 100%.
"""

from __future__ import annotations

__all__: list[str] = []
