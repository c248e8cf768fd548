"""``mmfuse plugins [--json]``: list components with provider, version, aliases and load errors."""

from __future__ import annotations

import argparse
import json

HELP = "list registered components, who provides them, and plugins that failed to load"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--kind", choices=["encoder", "fusion", "task", "reader", "callback"])


def run(args: argparse.Namespace) -> int:
    from mmfuse.cli import EXIT_FAILURE, EXIT_OK
    from mmfuse.plugin_host import get_registry

    registry = get_registry()
    specs = [s for s in registry.all_specs() if args.kind in (None, s.kind)]
    rows = [
        {
            "kind": s.kind,
            "name": s.name,
            "aliases": registry.unique_aliases(s),
            "plugin": s.provenance.plugin,
            "distribution": s.provenance.distribution,
            "version": s.provenance.version,
            "description": s.description,
        }
        for s in specs
    ]
    failures = [
        {
            "entry_point": f.entry_point,
            "distribution": f.distribution,
            "version": f.version,
            "value": f.value,
            "error": f"{type(f.error).__name__}: {f.error}",
        }
        for f in registry.broken
    ]
    if args.json:
        print(json.dumps({"components": rows, "failures": failures}, indent=2))
        return EXIT_OK
    cells = [
        (
            row["name"],
            ", ".join(row["aliases"]),
            f"{row['distribution'] or row['plugin']} {row['version'] or ''}".strip(),
            row["description"],
        )
        for row in rows
    ]
    widths = [max((len(cell[i]) for cell in cells), default=0) for i in range(3)]
    kind = None
    for row, (name, aliases, provider, description) in zip(rows, cells):
        if row["kind"] != kind:
            kind = row["kind"]
            print(f"\n{kind}s:")
        print(f"  {name:<{widths[0]}}  {aliases:<{widths[1]}}  {provider:<{widths[2]}}  {description}")
    if failures:
        print("\nplugins that failed to load:")
        for f in failures:
            print(f"  {f['entry_point']} = {f['value']} ({f['distribution']} {f['version']}): {f['error']}")
        return EXIT_FAILURE if not rows else EXIT_OK
    return EXIT_OK
