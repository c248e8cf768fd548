"""``mmfuse/generation``: a transformers causal LM that writes text conditioned on the fused
model. The condition becomes LM input embeddings in front of the text: the fused vector mapped to
``prefix_length`` tokens (ClipCap), every encoder token projected into the LM's embedding space
(LLaVA), or nothing (plain LM fine-tuning on prompt -> text). Training is teacher-forced with the
loss on the target text only; decoding goes through the LM's own ``generate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from mmfuse.contracts import EncoderOutput, SampleError, Task
from mmfuse_plugins.tasks.lm_loading import load_causal_lm
from mmfuse_plugins.tasks.text_configs import GenerationConfig, parse_generation_target

__all__ = ["GenerationTask", "build_generation", "DECODING_OPTIONS", "ROLE_PAD", "ROLE_CONTEXT", "ROLE_TARGET"]

#: roles of target tokens (the second row of an encoded target)
ROLE_PAD, ROLE_CONTEXT, ROLE_TARGET = 0, 1, 2
#: the decoding settings a caller may override per call (Predictor.generate, mmfuse predict)
DECODING_OPTIONS = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p")
IGNORE = -100


def _projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class GenerationTask(Task):
    """Outputs ``{"prefix" [B, P, H], "prefix_mask" [B, P]}``: the condition as LM embeddings.
    Targets are ``[B, 2, T]``: token ids (BOS, prompt, text, EOS) and each token's role."""

    def __init__(self, config: GenerationConfig, fused_dim: int, encoder_dims: dict[str, int], lm: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        self.lm = lm
        self.tokenizer = tokenizer
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        if self.bos_id is None or self.eos_id is None:
            raise ValueError(f"generation: the tokenizer of '{config.model}' has no BOS / EOS token; give one that has")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        width = int(lm.get_input_embeddings().embedding_dim)
        self.width = width
        if config.condition == "fused":
            self.projector = _projector(config.projector, fused_dim, width * config.prefix_length)
        elif config.condition == "tokens":
            names = config.encoders if config.encoders is not None else sorted(encoder_dims)
            unknown = sorted(set(names) - set(encoder_dims))
            if unknown:
                raise ValueError(f"generation: encoders {unknown} are not in the recipe's encoders {sorted(encoder_dims)}")
            self.projectors = nn.ModuleDict({name: _projector(config.projector, encoder_dims[name], width) for name in names})
        if config.lm_training == "frozen":
            self.lm.requires_grad_(False)
        #: decoding settings used by predict(); Predictor.generate and mmfuse predict override them
        self.decoding = {option: getattr(config, option) for option in DECODING_OPTIONS}

    @property
    def reads_fused(self) -> bool:  # condition tokens / none: the fusion head is frozen by the engine
        return self.config.condition == "fused"

    def train(self, mode: bool = True) -> "GenerationTask":
        super().train(mode)
        if mode and self.config.lm_training == "frozen":
            self.lm.eval()  # a frozen LM behaves as loaded: no dropout
        return self

    # ------------------------------------------------------------------ the condition

    def forward(self, fused: Tensor, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> dict[str, Tensor]:
        batch = fused.shape[0]
        if self.config.condition == "fused":
            prefix = self.projector(fused).reshape(batch, self.config.prefix_length, self.width)
            mask = torch.ones(prefix.shape[:2], dtype=torch.bool, device=prefix.device)
        elif self.config.condition == "tokens":
            parts, masks = [], []
            for name, projector in self.projectors.items():
                if name not in features:
                    continue
                output = features[name]
                parts.append(projector(output.tokens))
                masks.append(output.mask.bool() & present[name].to(output.mask.device).unsqueeze(1))
            prefix, mask = torch.cat(parts, dim=1), torch.cat(masks, dim=1)
        else:
            prefix = fused.new_zeros(batch, 0, self.width)
            mask = torch.zeros(batch, 0, dtype=torch.bool, device=fused.device)
        return {"prefix": prefix, "prefix_mask": mask}

    # ------------------------------------------------------------------ targets

    def encode_target(self, value: Any) -> Tensor:
        try:
            prompt, text = parse_generation_target(value)
        except ValueError as exc:
            raise SampleError(str(exc)) from exc
        context = self.context_ids(prompt)
        separator = " " if len(context) > 1 and not (prompt or self.config.prompt or " ")[-1].isspace() else ""
        target = self.tokenizer(separator + text, add_special_tokens=False)["input_ids"][: self.config.max_target_tokens]
        ids = context + target + [self.eos_id]
        roles = [ROLE_CONTEXT] * len(context) + [ROLE_TARGET] * (len(target) + 1)
        return torch.tensor([ids, roles], dtype=torch.long)

    def context_ids(self, prompt: str | None) -> list[int]:
        """BOS and the prompt's tokens (the sample's prompt, else the configured one)."""
        prompt = prompt if prompt is not None else self.config.prompt
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        return [self.bos_id, *ids]

    def collate_targets(self, items: Sequence[Tensor]) -> Tensor:
        length = max(item.shape[1] for item in items)
        batch = torch.zeros(len(items), 2, length, dtype=torch.long)
        batch[:, 0] = self.pad_id
        for index, item in enumerate(items):
            batch[index, :, : item.shape[1]] = item
        return batch

    # ------------------------------------------------------------------ teacher forcing

    def _sequence(self, outputs: dict[str, Tensor], ids: Tensor, roles: Tensor) -> dict[str, Tensor]:
        """Prefix + token embeddings, left-packed (every row's padding moved to its front, the
        layout decoder-only LMs expect), with attention mask, positions and labels."""
        embeddings = self.lm.get_input_embeddings()(ids)
        prefix = outputs["prefix"].to(embeddings.dtype)
        sequence = torch.cat([prefix, embeddings], dim=1)
        mask = torch.cat([outputs["prefix_mask"].to(ids.device), roles != ROLE_PAD], dim=1)
        labels = torch.cat([torch.full(prefix.shape[:2], IGNORE, dtype=torch.long, device=ids.device), ids.masked_fill(roles != ROLE_TARGET, IGNORE)], dim=1)
        order = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices
        sequence = sequence.gather(1, order.unsqueeze(-1).expand_as(sequence))
        mask, labels = mask.gather(1, order), labels.gather(1, order)
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)
        return {"inputs_embeds": sequence, "attention_mask": mask.long(), "position_ids": positions, "labels": labels}

    def teacher_forced(self, outputs: dict[str, Tensor], targets: Tensor) -> tuple[Tensor, Tensor]:
        """(logits predicting each next token ``[B, S-1, V]``, their labels ``[B, S-1]``)."""
        targets = targets.to(outputs["prefix"].device)
        inputs = self._sequence(outputs, targets[:, 0], targets[:, 1])
        labels = inputs.pop("labels")
        logits = self.lm(**inputs, use_cache=False).logits
        return logits[:, :-1], labels[:, 1:]

    def loss(self, outputs: dict[str, Tensor], targets: Tensor | None) -> Tensor:
        """Mean cross-entropy over the target text's tokens (and EOS); prefix, BOS and prompt
        tokens are context only."""
        if targets is None:
            raise ValueError("generation loss needs targets")
        logits, labels = self.teacher_forced(outputs, targets)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)

    # ------------------------------------------------------------------ decoding

    @torch.no_grad()
    def generate(self, outputs: dict[str, Tensor], prompts: Sequence[str | None] | None = None, **decoding: Any) -> list[str]:
        """Decode one text per sample through the LM's ``generate`` (inputs_embeds = prefix + BOS +
        prompt). ``decoding`` overrides this task's settings: max_new_tokens, num_beams,
        do_sample, temperature, top_p."""
        unknown = sorted(set(decoding) - set(DECODING_OPTIONS))
        if unknown:
            raise TypeError(f"unknown decoding options {unknown}; known: {list(DECODING_OPTIONS)}")
        settings = {**self.decoding, **{k: v for k, v in decoding.items() if v is not None}}
        batch = outputs["prefix"].shape[0]
        prompts = list(prompts) if prompts is not None else [None] * batch
        if len(prompts) != batch:
            raise ValueError(f"generate: {len(prompts)} prompts for {batch} samples")
        contexts = [self.context_ids(prompt) for prompt in prompts]
        length = max(len(context) for context in contexts)
        device = outputs["prefix"].device
        ids = torch.full((batch, length), self.pad_id, dtype=torch.long, device=device)
        roles = torch.zeros((batch, length), dtype=torch.long, device=device)
        for row, context in enumerate(contexts):
            ids[row, : len(context)] = torch.tensor(context, device=device)
            roles[row, : len(context)] = ROLE_CONTEXT
        inputs = self._sequence(outputs, ids, roles)
        inputs.pop("labels")
        inputs.pop("position_ids")  # generate derives positions from the attention mask
        sampling = {"temperature": settings["temperature"], "top_p": settings["top_p"]} if settings["do_sample"] else {}
        generated = self.lm.generate(
            **inputs,
            max_new_tokens=int(settings["max_new_tokens"]),
            num_beams=int(settings["num_beams"]),
            do_sample=bool(settings["do_sample"]),
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
            **sampling,
        )
        return [text.strip() for text in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]

    def predict(self, outputs: dict[str, Tensor]) -> list[str]:
        return self.generate(outputs)

    # ------------------------------------------------------------------ metrics

    def build_metrics(self) -> torchmetrics.MetricCollection:
        from torchmetrics.text import BLEUScore, Perplexity

        from mmfuse_plugins.tasks.rouge_metric import RougeL

        metrics: dict[str, torchmetrics.Metric] = {"perplexity": Perplexity(ignore_index=IGNORE)}
        if self.config.eval_generate:
            metrics["bleu"] = BLEUScore(n_gram=4, smooth=True)
            metrics["rougeL"] = RougeL()
        return torchmetrics.MetricCollection(metrics, compute_groups=False)

    def update_metrics(self, metrics: Any, outputs: dict[str, Tensor], targets: Tensor | None) -> None:
        logits, labels = self.teacher_forced(outputs, targets)
        metrics["perplexity"].update(logits.float(), labels)
        if not self.config.eval_generate:
            return
        prompts, references = self._texts(targets.cpu())
        predicted = self.generate(outputs, prompts, num_beams=1, do_sample=False)
        metrics["bleu"].update(predicted, [[reference] for reference in references])
        metrics["rougeL"].update(predicted, references)

    def _texts(self, targets: Tensor) -> tuple[list[str], list[str]]:
        """(prompt, reference text) of each encoded target."""
        prompts, references = [], []
        for ids, roles in zip(targets[:, 0].tolist(), targets[:, 1].tolist()):
            context = [token for token, role in zip(ids, roles) if role == ROLE_CONTEXT][1:]  # minus BOS
            target = [token for token, role in zip(ids, roles) if role == ROLE_TARGET]
            prompts.append(self.tokenizer.decode(context))
            references.append(self.tokenizer.decode(target, skip_special_tokens=True).strip())
        return prompts, references

    # ------------------------------------------------------------------ model folder

    def export_assets(self, folder: str) -> dict[str, Any]:
        target = Path(folder).resolve()
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        base.config.save_pretrained(target)
        base.generation_config.save_pretrained(target)
        self.tokenizer.save_pretrained(target)
        return {"model": str(target), "tokenizer": None, "pretrained": False}


def build_generation(config: GenerationConfig, fused_dim: int, encoder_dims: dict[str, int]) -> GenerationTask:
    lm, tokenizer = load_causal_lm(config)
    return GenerationTask(config, fused_dim, encoder_dims, lm, tokenizer)
