"""`mmfuse --help`, `plugins` and `validate` stay cheap: they never import torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import sys, contextlib, io
    from mmfuse.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(sys.argv[1:])
        except SystemExit as exc:
            code = exc.code
    heavy = sorted(m for m in ("torch", "transformers", "timm", "torchaudio", "torchvision") if m in sys.modules)
    print(repr((code, heavy)))
    """
)


def run_probe(*args: str):
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    return eval(result.stdout.strip().splitlines()[-1])


def test_help_plugins_validate_never_import_torch(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "encoders: {f: {type: vector, input_dim: 2}}\nfusion: {type: concat}\n"
        "tasks: {y: {type: classification, labels: [a, b]}}\n"
    )
    assert run_probe("--help") == (0, [])
    assert run_probe("plugins") == (0, [])
    assert run_probe("validate", str(recipe)) == (0, [])


def test_validate_exit_code_and_message(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("encoders: {f: {type: vectr, input_dim: 2}}\nfusion: {type: concat}\ntasks: {}\n")
    result = subprocess.run(
        [sys.executable, "-m", "mmfuse", "validate", str(recipe)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "encoders.f.type" in result.stderr and "line 1" in result.stderr
    assert "Did you mean 'vector'" in result.stderr


def test_plugins_json_lists_provenance():
    result = subprocess.run([sys.executable, "-m", "mmfuse", "plugins", "--json"], capture_output=True, text=True, check=True)
    data = json.loads(result.stdout)
    rows = {row["name"]: row for row in data["components"]}
    assert rows["mmfuse/vector"]["distribution"] == "mmfuse"
    assert "vector" in rows["mmfuse/vector"]["aliases"]
    assert rows["mmfuse/concat"]["kind"] == "fusion"


def test_a_missing_optional_extra_is_one_line_naming_what_to_install(capsys):
    from mmfuse.cli.errors import report_errors

    with report_errors() as status:
        raise ImportError("mmfuse tune needs Optuna: pip install 'mmfuse[tune]'")
    err = capsys.readouterr().err
    assert status.code == 1
    assert err == "error: mmfuse tune needs Optuna: pip install 'mmfuse[tune]'\n"  # no traceback
    with report_errors() as status:
        raise ImportError("cannot import name 'x' from 'y'")  # a bug, not a missing extra
    assert "Traceback" in capsys.readouterr().err
