"""Frozen-encoder feature cache: compute a frozen encoder's outputs once per sample, then train the
rest of the model from them.

The store sits between the encoders and the fusion head. It wraps the model's ``encode`` (an
instance attribute; the class, the state dict and the contracts are untouched) and, for each
encoder that is **frozen** (no parameter requires a gradient) and **deterministic** (it and all
its sub-modules are in eval mode), looks the batch's rows up by their sample keys (content digest
+ preprocessor identity, from :mod:`mmfuse.cache.samples`). A batch whose present rows are all
known is served from the store: pooled vector, tokens and token mask per row, padded to the
batch's longest row with the mask False. Otherwise the encoder runs on the whole batch and its
rows are stored. Entries belong to the weights they were computed with (a digest of the
encoder's state dict, re-checked at every epoch start): new weights make old entries unreachable.

An encoder that thaws (staged unfreezing) or is put in train mode simply runs again from that
step on; the store is not consulted for it while it trains.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import Tensor, nn

from mmfuse.contracts import EncoderOutput
from mmfuse.engine.callbacks import Callback

if TYPE_CHECKING:
    from mmfuse.engine.trainer import Trainer

__all__ = ["FeatureStore", "FeatureCacheCallback", "weights_digest"]

Row = tuple[Tensor, Tensor, Tensor]  # pooled [D], tokens [T, D], mask [T]


def weights_digest(module: nn.Module) -> str:
    """Digest of every parameter and buffer of ``module`` (names, dtypes, shapes, values)."""
    hasher = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        value = tensor.detach().to("cpu").contiguous().reshape(-1)
        hasher.update(f"{name}:{value.dtype}:{tuple(tensor.shape)}".encode())
        hasher.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return hasher.hexdigest()


def _frozen_and_deterministic(encoder: nn.Module) -> bool:
    if any(parameter.requires_grad for parameter in encoder.parameters()):
        return False
    return not any(module.training for module in encoder.modules())


class FeatureStore:
    """Per-encoder, per-weights store of encoder outputs by sample key; see the module docstring."""

    def __init__(self, model: nn.Module, names: list[str] | None = None) -> None:
        self.model = model
        self.names = list(names if names is not None else model.encoders)  # type: ignore[attr-defined]
        self.rows: dict[str, dict[tuple[int, int], Row]] = {name: {} for name in self.names}
        self.digests: dict[str, str] = {}
        #: encoders whose outputs carry ``extras`` (text_windows' offsets): rows are not stored
        #: (the store keeps tokens, mask and pooled only), so those encoders always run
        self.uncacheable: set[str] = set()
        self.served = {name: 0 for name in self.names}  # batches served from the store
        self.computed = {name: 0 for name in self.names}  # batches the encoder ran for
        self._original: Callable[..., Any] | None = None

    # ------------------------------------------------------------------ installing

    def install(self) -> "FeatureStore":
        """Route the model's ``encode`` through the store (idempotent)."""
        if self._original is None:
            self._original = self.model.encode  # type: ignore[attr-defined]
            self.model.encode = self.encode  # type: ignore[method-assign]
        self.check_weights()
        return self

    def remove(self) -> None:
        if self._original is not None:
            del self.model.encode  # the class's method again
            self._original = None

    def check_weights(self) -> None:
        """Forget an encoder's entries when its weights changed (a resume, a load)."""
        for name in self.names:
            encoder = self.model.encoders[name]  # type: ignore[attr-defined]
            if any(parameter.requires_grad for parameter in encoder.parameters()):
                continue  # training: not served, no need to hash
            digest = weights_digest(encoder)
            if self.digests.get(name) != digest:
                self.digests[name] = digest
                self.rows[name] = {}

    # ------------------------------------------------------------------ the encode seam

    def encode(self, batch: Mapping[str, Any]) -> tuple[dict[str, EncoderOutput], dict[str, Tensor]]:
        assert self._original is not None
        keys = batch.get("sample_keys") or {}
        inputs = batch["inputs"]
        present_in = batch.get("present", {})
        served: dict[str, EncoderOutput] = {}
        for name in self.names:
            if name not in inputs or name not in keys:
                continue
            encoder = self.model.encoders[name]  # type: ignore[attr-defined]
            if not _frozen_and_deterministic(encoder) or name not in self.digests or name in self.uncacheable:
                continue
            present = present_in.get(name)
            output = self._serve(name, keys[name], present)
            if output is None:
                with torch.no_grad():
                    output = encoder(inputs[name])
                if output.extras:
                    self.uncacheable.add(name)
                else:
                    self._remember(name, keys[name], present, output)
                self.computed[name] += 1
            else:
                self.served[name] += 1
            served[name] = output
        if not served:
            return self._original(batch)
        rest = {name: value for name, value in inputs.items() if name not in served}
        features: dict[str, EncoderOutput] = {}
        present: dict[str, Tensor] = {}
        if rest:
            features, present = self._original({**batch, "inputs": rest})
        for name, output in served.items():
            features[name] = output
            mask = present_in.get(name)
            if mask is None:
                mask = torch.ones(output.pooled.shape[0], dtype=torch.bool)
            present[name] = mask.to(output.pooled.device)
        order = list(self.model.encoders)  # type: ignore[attr-defined]
        ordered = sorted(features, key=order.index)  # fusion heads see encoders in model order
        return {name: features[name] for name in ordered}, {name: present[name] for name in ordered}

    # ------------------------------------------------------------------ rows

    @staticmethod
    def _row_keys(keys: Tensor, present: Tensor | None) -> list[tuple[int, int] | None]:
        """One key per row; None for rows without the modality (nothing to look up)."""
        flags = [True] * keys.shape[0] if present is None else present.tolist()
        return [tuple(pair) if flag else None for pair, flag in zip(keys.tolist(), flags)]  # type: ignore[misc]

    def _remember(self, name: str, keys: Tensor, present: Tensor | None, output: EncoderOutput) -> None:
        store = self.rows[name]
        for row, key in enumerate(self._row_keys(keys, present)):
            if key is None or key == (0, 0) or key in store:
                continue
            mask = output.mask[row].detach()
            length = int(mask.nonzero().max()) + 1 if bool(mask.any()) else 1
            store[key] = (
                output.pooled[row].detach().clone(),
                output.tokens[row, :length].detach().clone(),
                mask[:length].clone(),
            )

    def _serve(self, name: str, keys: Tensor, present: Tensor | None) -> EncoderOutput | None:
        store = self.rows[name]
        row_keys = self._row_keys(keys, present)
        found: list[Row | None] = []
        for key in row_keys:
            if key is None:
                found.append(None)
                continue
            entry = store.get(key)
            if entry is None:
                return None  # a present row not seen yet: run the encoder for the batch
            found.append(entry)
        real = [entry for entry in found if entry is not None]
        if not real:
            return None
        pooled_like, tokens_like, mask_like = real[0]
        length = max(entry[1].shape[0] for entry in real)
        size = len(found)
        pooled = pooled_like.new_zeros(size, *pooled_like.shape)
        tokens = tokens_like.new_zeros(size, length, *tokens_like.shape[1:])
        mask = mask_like.new_zeros(size, length)
        for row, entry in enumerate(found):
            if entry is None:  # a missing modality: blank content with one real token, as collate does
                mask[row, 0] = True
                continue
            pooled[row] = entry[0]
            tokens[row, : entry[1].shape[0]] = entry[1]
            mask[row, : entry[2].shape[0]] = entry[2]
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)


class FeatureCacheCallback(Callback):
    """Installs a :class:`FeatureStore` on the trainer's model for the fit (``data.feature_cache:
    auto``) and re-checks the frozen encoders' weights at every epoch start."""

    def __init__(self) -> None:
        self.store: FeatureStore | None = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.store = FeatureStore(trainer.model).install()
        frozen = [name for name in self.store.names if name in self.store.digests]
        trainer.log(f"feature cache: serving frozen encoder(s) {', '.join(frozen) or '(none frozen)'} from stored outputs")

    def on_train_epoch_start(self, trainer: "Trainer") -> None:
        if self.store is not None:
            self.store.check_weights()

    def on_fit_end(self, trainer: "Trainer", result: Any) -> None:
        if self.store is not None:
            self.store.remove()

    def on_exception(self, trainer: "Trainer", exception: BaseException) -> None:
        if self.store is not None:
            self.store.remove()
