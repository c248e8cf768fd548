"""Optional integrations, really installed (the test extra) and exercised end to end: TensorBoard
event files, MLflow runs, Parquet and Hugging Face `datasets` manifests."""

from __future__ import annotations

import json

import pytest

from mmfuse.data.errors import DataError
from mmfuse.data.manifest import read_manifest
from mmfuse.plugin_host import load_registry
from mmfuse.recipe import parse_recipe
from mmfuse.run import train
from tests.test_compression import RECIPE, write_data


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _recipe(tmp_path, **changes):
    raw = dict(RECIPE, data={"train": write_data(tmp_path, 48, 1), "val": write_data(tmp_path, 24, 2), "batch_size": 16})
    raw["trainer"] = dict(RECIPE["trainer"], epochs=2, log_every_steps=1)
    raw.update(changes)
    return parse_recipe(raw, load_registry())


def test_tensorboard_writes_real_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = _recipe(tmp_path)
    recipe.trainer.tensorboard = "on"
    outcome = train(recipe, run_dir=tmp_path / "run", registry=load_registry())
    events = EventAccumulator(str(outcome.run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "lr", "val/loss", "val/label/accuracy"} <= tags
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, len(losses) + 1))  # every step logged
    assert len(events.Scalars("val/label/accuracy")) == 2  # one evaluation per epoch
    assert events.Scalars("val/label/accuracy")[-1].value == pytest.approx(outcome.fit.metrics["val/label/accuracy"])


def test_mlflow_callback_logs_params_metrics_artifacts_and_status(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    recipe = _recipe(tmp_path, callbacks=[{"type": "mlflow", "experiment": "tests"}])
    outcome = train(recipe, run_dir=tmp_path / "run", registry=load_registry())
    client = MlflowClient(tracking_uri=(outcome.run_dir / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["optimizer.lr"] == "0.01" and run.data.params["encoders.a.input_dim"] == "8"
    history = client.get_metric_history(run.info.run_id, "val/label/accuracy")
    assert len(history) == 2
    assert history[-1].value == pytest.approx(outcome.fit.metrics["val/label/accuracy"])
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 6
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.csv", "evals.csv", "recipe.yaml"} <= artifacts


def test_parquet_manifest_reads_like_jsonl(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "rows.jsonl"
    source.write_text(open(write_data(tmp_path, 12, 3)).read())
    rows = _rows(source)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    manifest = read_manifest(tmp_path / "rows.parquet", registry=load_registry())
    assert [row.values for row in manifest.rows] == rows
    assert [row.line for row in manifest.rows] == list(range(1, 13))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="bad.parquet.*not a readable Parquet file"):
        read_manifest(tmp_path / "bad.parquet", registry=load_registry())


def test_hf_datasets_saved_to_disk_are_manifests(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _rows(tmp_path / write_data(tmp_path, 24, 2).split("/")[-1])
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dict"))
    registry = load_registry()
    chosen = read_manifest(tmp_path / "dict" / "dataset_dict.json", format="hf_dataset", reader_options={"split": "validation"}, registry=registry)
    assert [row.values for row in chosen.rows] == rows
    with pytest.raises(DataError, match="choose a split.*validation"):
        read_manifest(tmp_path / "dict" / "dataset_dict.json", format="hf_dataset", registry=registry)
    # a plain Dataset is found from its .arrow file by the extension
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "plain"))
    arrow = next((tmp_path / "plain").glob("*.arrow"))
    assert [row.values for row in read_manifest(arrow, registry=registry).rows] == rows


def test_training_reads_parquet_and_hf_dataset_manifests(tmp_path):
    pytest.importorskip("pyarrow")
    datasets = pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    recipe = _recipe(tmp_path)
    pq.write_table(pa.Table.from_pylist(_rows(tmp_path / "data-1.jsonl")), tmp_path / "train.parquet")
    datasets.Dataset.from_list(_rows(tmp_path / "data-2.jsonl")).save_to_disk(str(tmp_path / "val"))
    recipe.data.train = str(tmp_path / "train.parquet")
    recipe.data.val = str(next((tmp_path / "val").glob("*.arrow")))
    outcome = train(recipe, run_dir=tmp_path / "run", registry=load_registry())
    assert outcome.fit.metrics["val/label/accuracy"] > 0.5
