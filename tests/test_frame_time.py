"""xkd/data/frame_time.py: the integer frame clock is round((timestamp - start) * time_base * fps)."""
from fractions import Fraction
from types import SimpleNamespace

import numpy as np

from xkd.data.frame_time import frame_clock, frame_index


def test_frame_clock_is_the_rounded_exact_time():
    """Time bases of WebM (1/1000), MPEG-TS (1/90000), MP4 (1/12800) and odd ones, starts at 0, late
    and missing (None), timestamps before the start, and exact halves (round half to even)."""
    rng = np.random.default_rng(0)
    for time_base, start, fps in [(Fraction(1, 1000), 0, 8), (Fraction(1, 90000), 126000, 8),
                                  (Fraction(1, 12800), None, 25), (Fraction(1001, 30000), 7, 8),
                                  (Fraction(1, 16), 0, 8), (Fraction(3, 7), -5, 30)]:
        stream = SimpleNamespace(time_base=time_base, start_time=start)
        clock = frame_clock(stream, fps)
        timestamps = [int(t) for t in rng.integers(-2000, 10 ** 6, 500)] + [(start or 0) + k for k in range(-3, 40)]
        for timestamp in timestamps:
            exact = round((timestamp - (start or 0)) * time_base * fps)
            assert clock(timestamp) == exact == frame_index(stream, timestamp, fps), (time_base, start, timestamp)
    halves = frame_clock(SimpleNamespace(time_base=Fraction(1, 16), start_time=0), 8)  # frame = t / 2
    assert [halves(t) for t in (1, 3, 5, -1, -3)] == [0, 2, 2, 0, -2]
