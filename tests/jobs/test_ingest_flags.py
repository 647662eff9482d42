"""Bad flags are refused before any work: exit status 2 and one clear line, never a traceback or a per-item failure.

These runs stop before Ray starts (validation happens before the search), so they need no cluster.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.ingest import EXIT_USAGE, IngestConfig, UnchippedPixelsWarning, main, run_ingest

CATALOG = Path(__file__).resolve().parents[1] / "data" / "synthetic" / "items-fc.json"


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--since", "yesterday"], r"--since 'yesterday' is not an RFC 3339"),
        (["--since", "2024-02-30T00:00:00Z"], r"--since .* is not an RFC 3339"),
        (["--datetime", "last week"], r"--datetime 'last week'.*RFC 3339"),
        (["--datetime", "2024-05-01/2024-04-01"], r"ends before it starts"),
        (["--bbox", "0", "50", "1", "40"], r"--bbox 0.0 50.0 1.0 40.0: .*south <= north"),
        (["--bbox", "200", "0", "210", "10"], r"longitudes in \[-180, 180\]"),
        (["--nodata-override", "B99=0"], r"unknown band\(s\) \['B99'\].*B01"),
        (["--collections", "sentinel-1-rtc", "--nodata-override", "B01=0"], r"unknown band\(s\) \['B01'\]; bands of "
                                                                            r"the searched collections: vh, vv"),
        (["--work", "5"], r"unknown argument\(s\) \['--work', '5'\]"),  # never silently --workers
        (["--lease-ttl", "0"], r"--lease-ttl must be positive"),
        (["--lease-wait", "-1"], r"--lease-wait must be 0 or more seconds, got -1.0"),
        (["--schedule-slot", "every:7h"], r"every:7h: the period must .* dividing a day evenly .* '0 \*/6 \* \* \*'"),
        (["--schedule-slot", "tomorrow"], r"--schedule-slot 'tomorrow' is not an RFC 3339 .* Or pass every:PERIOD"),
    ],
)
def test_bad_flags_exit_2(flags: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(capsys, ["--catalog", str(CATALOG), "--output", str(tmp_path / "out"), *flags])
    assert __import__("re").search(expected, err), err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_missing_or_broken_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(capsys, ["--config", str(tmp_path / "nope.yaml")])
    assert "nope.yaml: no such file" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("catalog: [unclosed\n")
    assert "cannot be read as YAML" in _refused(capsys, ["--config", str(broken)])


def test_output_that_is_a_file_or_not_writable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "taken.txt"
    afile.write_text("not a directory")
    err = _refused(capsys, ["--catalog", str(CATALOG), "--output", str(afile)])
    assert "is a file, not a directory" in err
    err = _refused(capsys, ["--catalog", str(CATALOG), "--output", str(afile / "below")])
    assert "is a file, so the directory cannot be created" in err


def test_stride_larger_than_chip_warns(tmp_path: Path) -> None:
    cfg = IngestConfig(catalog=str(CATALOG), output=str(tmp_path / "out"), chip_size=64, stride=100,
                       collections=("no-such-collection",), progress=False)  # nothing matches: no Ray needed
    with pytest.warns(UnchippedPixelsWarning, match=r"--stride 100 is larger than --chip-size 64: a 36 px band"):
        summary = run_ingest(cfg)
    assert summary.items_found == 0


def test_bad_flags_in_yaml_are_refused_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"catalog": str(CATALOG), "output": str(tmp_path / "o"), "since": "yesterday"}))
    assert "--since 'yesterday'" in _refused(capsys, ["--config", str(config)])
