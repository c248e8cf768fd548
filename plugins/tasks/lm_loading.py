"""Loading the causal LM of ``mmfuse/generation`` (hub name or local folder, pretrained or from its
config) and wrapping it in LoRA adapters through the optional ``peft`` extra."""

from __future__ import annotations

from typing import Any

from torch import nn

from mmfuse_plugins.tasks.text_configs import GenerationConfig
from mmfuse.backbones.hf import from_pretrained_or_explain

__all__ = ["load_causal_lm"]


def load_causal_lm(config: GenerationConfig) -> tuple[nn.Module, Any]:
    """(the LM, its tokenizer); LoRA-wrapped when ``lm_training: lora``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = from_pretrained_or_explain(AutoTokenizer.from_pretrained, config.tokenizer or config.model, "tokenizer")
    if config.pretrained:
        lm = from_pretrained_or_explain(AutoModelForCausalLM.from_pretrained, config.model, "causal LM")
    else:
        lm_config = from_pretrained_or_explain(AutoConfig.from_pretrained, config.model, "causal LM config")
        lm = AutoModelForCausalLM.from_config(lm_config)
    if config.lm_training == "lora":
        lm = _with_lora(lm, config)
    return lm, tokenizer


def _with_lora(lm: nn.Module, config: GenerationConfig) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ImportError(
            "generation: lm_training: lora needs peft; install the extra: pip install 'mmfuse[peft]'"
        ) from exc
    from transformers.pytorch_utils import Conv1D

    lora = LoraConfig(
        task_type="CAUSAL_LM",
        # GPT-2's attention uses Conv1D (weights stored transposed); say so instead of letting peft warn
        fan_in_fan_out=any(isinstance(module, Conv1D) for module in lm.modules()),
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
    )
    return get_peft_model(lm, lora)
