"""Keeping third-party progress bars (transformers' "Loading weights", Hugging Face Hub
downloads) out of training logs; ``--verbose`` on ``mmfuse train``, ``chain`` and ``tune`` keeps
them (``mmfuse demo`` always silences them)."""

from __future__ import annotations

import os
import sys

__all__ = ["silence_third_party_progress_bars"]


def silence_third_party_progress_bars() -> None:
    """Disable the Hub's and transformers' tqdm bars, now and in processes started later.

    The environment variable is read by huggingface_hub when it is imported (transformers takes
    its default from it), so nothing is imported here; already imported libraries are told
    directly."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
