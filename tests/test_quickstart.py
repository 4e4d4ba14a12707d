"""The offline main job runs end to end (few epochs) and writes the table it prints."""

import json

from quickstart import digits_splits, main


def test_digits_splits_are_stratified_and_normalised():
    train, test, mean, std = digits_splits(500, 8)
    assert len(train) == 500 and len(test) == 1797 - 500
    assert train[0]["pixel_values"].shape == (1, 8, 8)
    assert sorted(set(train[0:500]["labels"].tolist())) == list(range(10))
    pixels = train[0:500]["pixel_values"]
    assert abs(pixels.mean().item()) < 1e-4 and abs(pixels.std().item() - 1) < 1e-3


def test_quickstart_prints_and_writes_the_table(tmp_path, capsys):
    results = tmp_path / "results.md"
    rows = main([
        "--output_dir", str(tmp_path / "run"), "--teacher_epochs", "2", "--student_epochs", "1",
        "--train_samples", "256", "--methods", "ce,srd", "--use_cpu", "true", "--results_file", str(results),
    ])
    assert [r["model"] for r in rows] == ["teacher (CE)", "student (CE)", "student (SRD)"]
    assert all(0.0 <= r["top1"] <= 100.0 for r in rows)
    assert rows[0]["params"] > rows[1]["params"] == rows[2]["params"]
    printed = capsys.readouterr().out
    assert "| student (SRD) | resnet8 |" in printed
    assert results.read_text() in printed
    assert json.loads(results.with_suffix(".json").read_text()) == rows
