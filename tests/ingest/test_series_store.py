"""The series store's rows read back as typed `SeriesRecord`s, volumes without copies."""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from lungcls.ingest.series_store import iter_series, load_series
from lungcls.io.storage import Storage
from tests.io.test_tables import SERIES_FILE, series_record, store_series


def test_series_read_back_as_written(storage: Storage) -> None:
    store_series(storage, ["series-1", "series-2"])
    loaded = load_series(storage, SERIES_FILE, "series-2")
    (listed,) = iter_series(storage, ["series-2"])
    written = series_record("series-2")
    for series in (loaded, listed):
        for field in fields(series):
            if field.name != "volume":
                assert getattr(series, field.name) == getattr(written, field.name), field.name
        assert series.volume.dtype == np.int16 and np.array_equal(series.volume, written.volume)
        assert not series.volume.flags.writeable  # a view of the file's bytes, not a copy
    assert isinstance(loaded.spacing_zyx_mm, tuple) and isinstance(loaded.orientation, tuple)
