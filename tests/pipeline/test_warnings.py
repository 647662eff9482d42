"""strict() and ignore() flip every pipeline warning at once and leave other warnings alone."""

from __future__ import annotations

import warnings

import pytest

from pipeline.warnings import MissingBandWarning, PipelineWarning, ServerFeatureWarning, ignore, strict


@pytest.mark.parametrize("category", [MissingBandWarning, ServerFeatureWarning])
def test_strict_turns_pipeline_warnings_into_errors(category: type[PipelineWarning]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # start from silence (pytest itself runs with -W error), so only strict() raises
        warnings.warn("silent", category, stacklevel=1)
        with strict(), pytest.raises(category, match="no B8A"):
            warnings.warn("no B8A", category, stacklevel=1)


def test_ignore_silences_pipeline_warnings_only() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ignore():
            warnings.warn("server has no filter", ServerFeatureWarning, stacklevel=1)
            warnings.warn("not ours", RuntimeWarning, stacklevel=1)
    assert [w.category for w in caught] == [RuntimeWarning]
