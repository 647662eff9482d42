"""jobs/pretrain.py configuration: YAML + flags, unknown keys, smoke resolution, validation, the lr schedule, the
report cadence."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from jobs._config import ConfigError, parse_config
from jobs.pretrain import (
    PretrainConfig,
    lr_factor,
    main,
    parse_pairs,
    public_config,
    report_kind,
    resolve_smoke,
    validate,
)

REPO = Path(__file__).resolve().parents[2]


def test_shipped_configs_parse() -> None:
    for name in ("pretrain_sample.yaml", "pretrain_smoke.yaml"):
        cfg = parse_config(PretrainConfig, ["--config", str(REPO / "jobs" / "configs" / name), "--data", "d"])
        validate(resolve_smoke(cfg))


def test_yaml_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data: [a, b]\nmax_steps: 10\nfuse_at: [1, 3, 4]\nmasking: [radius_mode=area]\n")
    cfg = parse_config(PretrainConfig, ["--config", str(path), "--max-steps", "20", "--no-pairing"])
    assert cfg.data == ("a", "b") and cfg.max_steps == 20 and cfg.fuse_at == (1, 3, 4) and cfg.pairing is False
    assert parse_pairs(cfg.masking, "masking") == {"radius_mode": "area"}


def test_grad_checkpointing_takes_a_policy_name() -> None:
    assert parse_config(PretrainConfig, ["--data", "d"]).grad_checkpointing == "off"
    assert parse_config(PretrainConfig, ["--data", "d", "--grad-checkpointing", "mlp"]).grad_checkpointing == "mlp"
    with pytest.raises(ConfigError, match=r"'blocks', 'mlp'"):  # the old boolean form names the choices
        parse_config(PretrainConfig, ["--data", "d", "--grad-checkpointing", "true"])


def test_unknown_key_is_an_error_listing_the_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data: [x]\nmax_step: 10\n")
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'max_step'" in err and "max_steps" in err and "checkpoint_every" in err
    assert main(["--data", "x", "--max-stepz", "3"]) == 2
    assert "valid keys" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"model": "nope"}, "--model"),
        ({"batch_size": 0}, "--batch-size"),
        ({"run_name": "a/b"}, "--run-name"),
        ({"fuse_at": (5,)}, "--fuse-at"),
        ({"model_kwargs": ("oops",)}, "--model-kwargs"),
        ({"report_every": -1}, "--report-every"),
    ],
)
def test_validate_names_the_flag(overrides: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        validate(replace(PretrainConfig(data=("x",)), **overrides))


def test_no_data_and_no_samples_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--samples", str(tmp_path / "missing.json"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "No --data given" in err and "--samples /absolute/path" in err


def test_smoke_uses_the_family_test_variant_on_two_cpu_workers() -> None:
    cfg = resolve_smoke(PretrainConfig(model="heracles_base", smoke_test=True, max_steps=1000, batch_size=64))
    assert (cfg.model, cfg.num_workers, cfg.use_gpu) == ("heracles_test", 2, False)
    assert cfg.max_steps <= 8 and cfg.batch_size <= 2 and cfg.checkpoint_every <= 2
    assert resolve_smoke(PretrainConfig(model="rsvheat_base", smoke_test=True)).model == "rsvheat_test"
    assert resolve_smoke(PretrainConfig(model="vheat_base")) == PretrainConfig(model="vheat_base")


def test_public_config_has_no_credentials() -> None:
    cfg = PretrainConfig(data=("s3://key:secret@bucket/ds?X-Amz-Signature=abc",), storage_path="s3://u:p@b/runs")
    text = str(public_config(cfg))
    assert "secret" not in text and "abc" not in text and "u:p" not in text


def test_lr_warms_up_then_decays_to_the_floor() -> None:
    cfg = PretrainConfig(warmup_steps=10, max_steps=110, min_lr_ratio=0.01)
    factors = [lr_factor(s, cfg) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert lr_factor(110, cfg) == pytest.approx(0.01)


def test_reports_only_with_checkpoints_unless_asked() -> None:
    cfg = PretrainConfig(checkpoint_every=4, max_steps=10)
    kinds = {s: report_kind(s, cfg) for s in range(1, 11)}
    assert {s for s, k in kinds.items() if k} == {4, 8, 10} and set(kinds.values()) == {"checkpoint", None}
    every3 = {s: report_kind(s, replace(cfg, report_every=3)) for s in range(1, 11)}
    assert {s for s, k in every3.items() if k == "metrics"} == {3, 6, 9}  # step 12 would be a checkpoint
    assert {s for s, k in every3.items() if k == "checkpoint"} == {4, 8, 10}
