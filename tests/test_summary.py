from autoresearch.summary import format_summary, parse_summary


def test_block_has_the_original_layout():
    text = format_summary({"val_bpb": 0.9979, "training_seconds": 300.12, "num_steps": 953, "depth": 8,
                           "trust": "sealed", "peak_vram_mb": None})
    lines = text.splitlines()
    assert lines[0] == "---"
    assert lines[1] == "val_bpb:          0.997900"
    assert "training_seconds: 300.1" in lines
    assert "num_steps:        953" in lines
    assert "trust:            sealed" in lines
    assert not any(line.startswith("peak_vram_mb") for line in lines)


def test_parse_reads_the_last_block_only():
    first = format_summary({"val_bpb": 2.0, "trust": "in-process"})
    last = format_summary({"val_bpb": 1.5, "trust": "sealed", "num_steps": 10})
    values = parse_summary("step 1\n" + first + "\nmore output\n" + last + "\n")
    assert values["val_bpb"] == 1.5 and values["trust"] == "sealed" and values["num_steps"] == 10.0
