"""What ``mmfuse eval`` and ``mmfuse predict`` share: options naming a manifest, and a trained
model (from a run or model folder) with a DataLoader over that manifest, built by the same
Dataset and collate function as training."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

__all__ = ["add_data_arguments", "ModelData", "open_model_data", "model_data_for"]


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run folder of `mmfuse train` (or a model folder)")
    parser.add_argument("--data", type=Path, required=True, help="manifest file (JSONL, CSV, TSV)")
    parser.add_argument("--root", type=Path, help="base folder of relative media paths (default: the manifest's folder)")
    parser.add_argument("--format", help="reader name (default: from the file extension)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument(
        "--on-bad-sample", choices=["error", "skip"], help="default: the run's data.on_bad_sample"
    )


@dataclass
class ModelData:
    model: Any  # FusedModel, in eval mode on ``device``
    recipe: Any  # the model folder's resolved recipe
    dataset: Any  # ManifestDataset
    loader: Any  # DataLoader
    device: Any  # torch.device

    def batches(self) -> Iterator[dict[str, Any]]:
        """Non-empty batches on the device (batches whose rows were all skipped are dropped)."""
        from mmfuse.engine.loading import move_to_device

        for batch in self.loader:
            if batch["inputs"]:
                yield move_to_device(batch, self.device)


def open_model_data(args: argparse.Namespace, *, with_targets: bool) -> ModelData:
    """Load the model of ``args.run`` and a DataLoader over ``args.data``; raises ModelFolderError
    or DataError on bad input."""
    from mmfuse.artifact import load_model
    from mmfuse.data.manifest import read_manifest
    from mmfuse.engine.distributed import resolve_device
    from mmfuse.plugin_host import get_registry

    device = resolve_device(args.device)
    model, recipe = load_model(args.run, registry=get_registry(), device=device)
    if args.on_bad_sample:
        recipe.data.on_bad_sample = args.on_bad_sample
    manifest = read_manifest(args.data, root=args.root, format=args.format, role="--data")
    return model_data_for(
        model, recipe, manifest, batch_size=args.batch_size, num_workers=args.num_workers, device=device,
        with_targets=with_targets,
    )


def model_data_for(
    model: Any, recipe: Any, manifest: Any, *, batch_size: int, num_workers: int, device: Any, with_targets: bool
) -> ModelData:
    """A DataLoader over ``manifest`` built by the training Dataset and collate, for ``model``."""
    from torch.utils.data import DataLoader

    from mmfuse.data.collate import BatchCollator
    from mmfuse.data.dataset import build_dataset

    preprocessors = {name: encoder.preprocessor() for name, encoder in model.encoders.items()}
    dataset = build_dataset(manifest, recipe, model, preprocessors=preprocessors, with_targets=with_targets)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=BatchCollator(preprocessors, dict(model.tasks.items()) if with_targets else {}),
    )
    return ModelData(model=model, recipe=recipe, dataset=dataset, loader=loader, device=device)
