"""jobs/_config.py: dataclass → flags + YAML, precedence, unknown keys and type errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from jobs._config import ConfigError, parse_config, to_dict
from jobs.ingest import IngestConfig


@dataclasses.dataclass(frozen=True)
class _Cfg:
    # Data
    name: str
    size: int = 256
    rate: float | None = None
    bands: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None
    mode: Literal["fast", "exact"] = "fast"
    dry: bool = False


def test_defaults_yaml_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nsize: 64\nbands: [B02, B03]\nmode: exact\n")
    cfg = parse_config(_Cfg, ["--config", str(path), "--size", "32", "--dry", "--bbox", "1", "2", "3", "4"])
    assert cfg == _Cfg(name="a", size=32, bands=("B02", "B03"), mode="exact", dry=True, bbox=(1.0, 2.0, 3.0, 4.0))
    assert to_dict(cfg)["bands"] == ["B02", "B03"]


def test_underscore_and_dash_flags_and_null() -> None:
    assert parse_config(_Cfg, ["--name=x", "--rate", "none"]).rate is None
    assert parse_config(_Cfg, ["--name", "x", "--rate", "0.5"]).rate == 0.5


def test_unknown_yaml_key_lists_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nsise: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'sise'.*valid keys: bands, bbox, dry, mode, name, rate, size"):
        parse_config(_Cfg, ["--config", str(path)])


def test_unknown_flag_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown argument.*--colour.*valid keys"):
        parse_config(_Cfg, ["--name", "a", "--colour", "red"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", "a", "--size", "big"], "expected an integer"),
        (["--name", "a", "--mode", "slow"], r"expected one of \['fast', 'exact'\]"),
        (["--name", "a", "--bbox", "1", "2"], "expected 4"),
        ([], r"missing required config key\(s\) \['name'\]"),
    ],
)
def test_type_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_Cfg, argv)


def test_yaml_type_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: a\ndry: maybe\n")
    with pytest.raises(ConfigError, match="'dry' got 'maybe'; expected true or false"):
        parse_config(_Cfg, ["--config", str(path)])


def test_ingest_configs_parse(repo_root: Path) -> None:
    for path in sorted((repo_root / "jobs" / "configs").glob("ingest*.yaml")):
        cfg = parse_config(IngestConfig, ["--config", str(path)])
        assert cfg.output, path


def test_allow_local_hrefs_flag_reaches_the_catalog_reader(repo_root: Path) -> None:
    from jobs.ingest import search

    catalog = str(repo_root / "tests" / "data" / "synthetic" / "items-fc.json")
    base = ["--catalog", catalog, "--output", "out"]
    assert parse_config(IngestConfig, base).allow_local_hrefs is None  # safe default: decided by the source
    assert parse_config(IngestConfig, [*base, "--allow-local-hrefs"]).allow_local_hrefs is True
    refused = parse_config(IngestConfig, [*base, "--no-allow-local-hrefs"])
    items, result = search(refused, None)
    assert items == [] and len(result.failures) == 4 and "local" in result.failures[0].message.lower()
    assert len(search(parse_config(IngestConfig, base), None)[0]) == 4  # a local catalog may use local hrefs


def test_nodata_override_flag() -> None:
    from jobs.ingest import nodata_overrides

    cfg = parse_config(IngestConfig, ["--catalog", "c", "--output", "o", "--nodata-override", "B01=0", "*=nan", "vv=none"])
    parsed = nodata_overrides(cfg.nodata_override)
    assert parsed["B01"] == {"nodata": 0.0} and parsed["vv"] == {"nodata": None}
    assert parsed["*"]["nodata"] != parsed["*"]["nodata"]  # NaN
    with pytest.raises(ConfigError, match=r"--nodata-override 'B01' is not BAND=VALUE"):
        nodata_overrides(["B01"])
    with pytest.raises(ConfigError, match="is not BAND=VALUE"):
        nodata_overrides(["B01=zero"])
