"""``mmfuse quantize RUN --method int8-dynamic|int8-weight-only [--data FILE]``: quantize a
trained model folder, measure what changed, write the quantized folder and a report beside it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "post-training int8 quantization of a trained model (torchao); measures accuracy, latency and size"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mmfuse.cli.model_data import add_data_arguments
    from mmfuse.compression import QUANTIZATION_METHODS as METHODS

    add_data_arguments(parser)
    parser.add_argument("--method", choices=sorted(METHODS), default="int8-dynamic", help="quantization method")
    parser.add_argument(
        "--out", type=Path, help="quantized model folder (default: <run>/model-<method>); the report is <out>.json"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the manifest (median reported)")


def run(args: argparse.Namespace) -> int:
    from mmfuse.cli import EXIT_BAD_INPUT, EXIT_OK
    from mmfuse.cli.errors import report_errors

    with report_errors() as status:
        import copy

        from mmfuse.artifact import WEIGHTS_FILE, resolve_model_dir, save
        from mmfuse.cli.eval import evaluate_batches
        from mmfuse.cli.model_data import open_model_data
        from mmfuse.compression.quantize import QuantizationError, QuantizationReport, quantize_model, time_forward
        from mmfuse.plugin_host import get_registry

        source = resolve_model_dir(args.run)
        data = open_model_data(args, with_targets=True)
        batches = list(data.batches())  # both models see exactly the same preprocessed inputs
        if not batches:
            print(f"error: {args.data}: no usable rows to measure on", flush=True)
            return EXIT_BAD_INPUT
        rows = sum(len(batch["index"]) for batch in batches)
        float_metrics = evaluate_batches(data.model, batches, data.device)
        float_ms = time_forward(data.model, batches, args.repeats)
        quantized = copy.deepcopy(data.model)
        try:
            modules = quantize_model(quantized, args.method)
        except QuantizationError as exc:
            print(f"error: {exc}", flush=True)
            return EXIT_BAD_INPUT
        quantized_metrics = evaluate_batches(quantized, batches, data.device)
        quantized_ms = time_forward(quantized, batches, args.repeats)
        out = args.out or source.parent / f"{source.name}-{args.method}"
        save(quantized.cpu(), out, data.recipe, get_registry())
        report = QuantizationReport(
            method=args.method,
            modules=modules,
            rows=rows,
            float_bytes=(source / WEIGHTS_FILE).stat().st_size,
            quantized_bytes=(out / WEIGHTS_FILE).stat().st_size,
            float_ms=float_ms,
            quantized_ms=quantized_ms,
            float_metrics={k: v for k, v in float_metrics.items() if k != "rows"},
            quantized_metrics={k: v for k, v in quantized_metrics.items() if k != "rows"},
        )
        report_file = out.with_name(out.name + ".json")
        report_file.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"{len(modules)} linear layers quantized ({args.method}); measured on {rows} rows of {args.data}")
        print(report.table())
        print(f"quantized model: {out}  (mmfuse.load / mmfuse predict read it like any model folder)")
        print(f"report: {report_file}")
        return EXIT_OK
    return status.code
