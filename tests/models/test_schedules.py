"""cosine_schedule: linear warm-up, then a cosine from start to end; one value per step."""

import numpy as np
import pytest

from tipslab.models.schedules import cosine_schedule


@pytest.mark.parametrize("steps,warmup", [(100, 0), (100, 10), (7, 3), (5, 5), (4, 9), (1, 0)])
def test_length_and_dtype(steps, warmup):
    s = cosine_schedule(1.0, 0.1, steps, warmup)
    assert s.shape == (steps,) and s.dtype == np.float64


def test_warmup_is_linear_from_warmup_start_to_start():
    s = cosine_schedule(start=1e-3, end=1e-5, steps=50, warmup_steps=10, warmup_start=1e-4)
    np.testing.assert_allclose(s[:10], 1e-4 + (1e-3 - 1e-4) * np.arange(10) / 10, rtol=1e-12)
    assert s[0] == pytest.approx(1e-4)
    assert s[10] == pytest.approx(1e-3)  # the first step after warm-up is the peak
    assert s.max() == pytest.approx(1e-3)
    assert np.all(np.diff(s[:11]) > 0)


def test_warmup_longer_than_run_is_all_warmup():
    s = cosine_schedule(1.0, 0.0, steps=4, warmup_steps=10)
    np.testing.assert_allclose(s, [0.0, 0.25, 0.5, 0.75])


def test_cosine_shape_decreasing():
    start, end, steps = 0.5, 0.01, 200
    s = cosine_schedule(start, end, steps)
    assert s[0] == pytest.approx(start)
    assert np.all(np.diff(s) < 0)
    assert s[steps // 2] == pytest.approx((start + end) / 2)  # cosine midpoint
    i = np.arange(steps)
    np.testing.assert_allclose(s, end + 0.5 * (start - end) * (1 + np.cos(np.pi * i / steps)), rtol=1e-12)
    assert s[-1] == pytest.approx(end, abs=1e-4 * (start - end))
    assert s.min() >= end


def test_cosine_increasing_for_teacher_momentum():
    s = cosine_schedule(0.992, 1.0, steps=500)
    assert s[0] == pytest.approx(0.992)
    assert np.all(np.diff(s) > 0)
    assert s[-1] == pytest.approx(1.0, abs=1e-6)
    assert s.max() <= 1.0


def test_end_reached_at_last_step_after_warmup():
    s = cosine_schedule(2.0, 0.5, steps=300, warmup_steps=50)
    assert s[50] == pytest.approx(2.0)
    assert np.all(np.diff(s[50:]) < 0)
    assert s[-1] == pytest.approx(0.5, abs=1e-3)


def test_constant_when_start_equals_end():
    np.testing.assert_allclose(cosine_schedule(0.04, 0.04, 30), np.full(30, 0.04))
