"""``mmfuse cache info|clear`` on a disk cache written by a dataset."""

from __future__ import annotations

from mmfuse.cli import main


def test_info_lists_each_encoder_and_clear_removes_them(demo_recipe, tmp_path, capsys):
    from mmfuse.run import prepare

    dataset = prepare(demo_recipe("data.cache=disk", f"data.cache_dir={tmp_path}")).train
    for index in range(len(dataset)):
        dataset[index]
    dataset.sample_cache.flush()

    assert main(["cache", "info", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for label in ("text: TextPreprocessor", "image: ImagePreprocessor", "audio: MelWaveformPreprocessor", "video: VideoPreprocessor"):
        assert label in out
    assert "in 4 folder(s)" in out

    assert main(["cache", "clear", "--dir", str(tmp_path), "--kind", "samples"]) == 0
    assert "removed 4 cache folder(s)" in capsys.readouterr().out
    assert main(["cache", "info", "--dir", str(tmp_path)]) == 0
    assert "(empty)" in capsys.readouterr().out
