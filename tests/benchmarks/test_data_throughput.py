"""benchmarks/data_throughput.py --quick: every section runs end to end at tiny sizes."""

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import data_throughput  # noqa: E402  (benchmarks/ is not a package)


def test_quick_run_reports_every_section(tmp_path, capsys):
    assert data_throughput.main(["--quick", f"--workdir={tmp_path}"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    sections = {row["section"]: row for row in lines[:-1]}
    assert list(sections) == ["lowdim", "png", "jpeg", "mp4", "memory"]
    summary = lines[-1]
    assert summary["results"] == sections
    assert summary["machine"]["cpu_count"] >= 1 and "--quick" in summary["command"]
    for row in sections.values():
        assert row["windows_per_s"] > 0 and row["timed_batches"] == 3
    assert sections["mp4"]["conversion_frames_per_s"] > 0
    assert sections["memory"]["load_frames_per_s"] > 0
    assert sections["memory"]["image_crop"] == [28, 28]  # 84/96 of the 32-pixel frames
    assert sections["png"]["cameras"] == 2 and sections["png"]["image_size"] == 32
    assert os.listdir(tmp_path) == []  # the generated data is removed
