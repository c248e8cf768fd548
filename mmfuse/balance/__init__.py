"""Imbalance-aware multimodal training: modality dropout, auxiliary unimodal heads, gradient
modulation (OGM-GE), modality-balanced learning rates and per-modality diagnostics.

Joint training of a fused model tends to lean on the modality that learns fastest and to starve
the others (the "greedy learner" / modality-imbalance problem). Each tool here is opt-in through
the recipe (``fusion.modality_dropout``, ``tasks.<name>.unimodal_aux``,
``trainer.gradient_modulation``, ``trainer.modality_lr``); the diagnostics run in every
multimodal fit. docs/fusion_and_tasks.md ("Modality imbalance") describes formulas and sources.

This package's ``__init__`` and ``config`` import no torch (the recipe schema uses them).
"""
