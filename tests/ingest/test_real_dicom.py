"""Ingest of the real Lung-PET-CT-Dx series in ../shared/data (TCIA, CC BY 4.0)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lungcls.config import Settings
from lungcls.ingest.deid import pseudonym
from lungcls.ingest.run import ingest
from lungcls.ingest.series_store import SeriesRecord, iter_series
from lungcls.io.storage import Storage
from tests.support import REAL_DATA, TEST_KEY, make_settings

SOURCE = REAL_DATA / "lung-pet-ct-dx"


@pytest.fixture(scope="module")
def real_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list[SeriesRecord]]:
    assert SOURCE.is_dir(), f"real CT data missing at {SOURCE} (see ../shared/data/README.md)"
    tmp = tmp_path_factory.mktemp("real")
    shutil.copytree(SOURCE / "Lung_Dx-A0001", tmp / "root" / "inbox" / "tcia" / "case-1")
    settings = make_settings(tmp / "root", tmp)
    summary = ingest(settings, progress=False)
    assert (summary.series_ingested, summary.quarantined) == (2, [])
    return settings, list(iter_series(Storage.from_settings(settings)))


def test_both_series_have_the_published_geometry(real_root) -> None:
    _, stored = real_root
    assert len(stored) == 2
    assert sorted(s.convolution_kernel for s in stored) == ["B", "L"]
    for series in stored:
        volume = series.volume
        assert volume.shape == (64, 512, 512)
        assert np.allclose(series.spacing_zyx_mm, (5.0, 0.8418, 0.8418), atol=1e-4)
        # air in front of the chest, inside the field of view
        air = np.median(volume[20:44, 0:40, 200:312])
        assert -1050 <= air <= -950, air
        assert volume.max() > 1000  # bone survives the HU conversion


def test_annotations_map_to_stored_slices(real_root) -> None:
    _, stored = real_root
    key = TEST_KEY.encode()
    annotations = sorted((SOURCE / "annotations" / "A0001").glob("*.xml"))
    assert annotations
    files_by_uid = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for p in SOURCE.glob("Lung_Dx-A0001/*/*.dcm")
    }
    for xml in annotations:
        slice_id = pseudonym(key, "instance", xml.stem)
        hits = [(s, s.slice_ids.index(slice_id)) for s in stored if slice_id in s.slice_ids]
        assert len(hits) == 1, f"{xml.name} maps to {len(hits)} stored slices"
        series, index = hits[0]
        source = pydicom.dcmread(files_by_uid[xml.stem])
        expected = source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)
        assert np.array_equal(series.volume[index], expected.astype(np.int16))
        # slices are sorted along z: the stored index matches the slice position
        z0 = series.origin_xyz_mm[2]
        assert float(source.ImagePositionPatient[2]) == pytest.approx(z0 + 5.0 * index)


def test_no_identifier_in_the_series_store(real_root) -> None:
    settings, _ = real_root
    root = Path(settings.root)
    sample = pydicom.dcmread(next(SOURCE.glob("Lung_Dx-A0001/*/1-01.dcm")))
    secrets = {"Lung_Dx-A0001", str(sample.StudyInstanceUID), str(sample.SeriesInstanceUID)}
    secrets |= {p.stem for p in (SOURCE / "annotations" / "A0001").glob("*.xml")}
    import pyarrow.parquet as pq

    for path in (root / "series").glob("*.parquet"):
        text = str(pq.read_table(path).drop(["volume"]).to_pylist())
        assert not [s for s in secrets if s in text or s.encode() in path.read_bytes()]


def _largest_annotation() -> tuple[Path, tuple[int, int, int, int], pydicom.Dataset]:
    import xml.etree.ElementTree as ET

    best = None
    for xml in (SOURCE / "annotations" / "A0001").glob("*.xml"):
        box = ET.parse(xml).find(".//bndbox")
        xmin, ymin, xmax, ymax = (int(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        if best is None or (xmax - xmin) * (ymax - ymin) > best[1]:
            best = (xml, (xmax - xmin) * (ymax - ymin), (xmin, ymin, xmax, ymax))
    assert best is not None
    uid = best[0].stem
    path = next(
        p
        for p in SOURCE.glob("Lung_Dx-A0001/*/*.dcm")
        if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == uid
    )
    return path, best[2], pydicom.dcmread(path, stop_before_pixels=True)


def test_dataset_crop_centered_on_the_tumour_contains_it(tmp_path: Path) -> None:
    from lungcls.dataset.build import build_dataset
    from lungcls.dataset.manifest import load_manifest
    from lungcls.dataset.shards import iter_samples

    path, (xmin, ymin, xmax, ymax), ds = _largest_annotation()
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    x0, y0, z0 = (float(v) for v in ds.ImagePositionPatient)
    center = (x0 + (xmin + xmax) / 2 * column_spacing, y0 + (ymin + ymax) / 2 * row_spacing, z0)
    batch = tmp_path / "root" / "inbox" / "tcia"
    shutil.copytree(path.parent, batch / "case-1")
    (batch / "labels.csv").write_text(
        "series_uid,label,nodule_x_mm,nodule_y_mm,nodule_z_mm\n"
        f"{ds.SeriesInstanceUID},1,{center[0]},{center[1]},{center[2]}\n"
    )
    settings = make_settings(
        tmp_path / "root",
        tmp_path,
        preprocess={"shape": (3, 96, 96), "spacing_mm": (5.0, 1.0, 1.0)},
        dataset={"require_both_classes": False},
    )
    assert ingest(settings, progress=False).quarantined == []
    result = build_dataset(settings, progress=False)
    assert result.created and result.preprocessed == 1
    storage = Storage.from_settings(settings)
    manifest = load_manifest(storage, "lung-nodules")
    (sample,) = iter_samples(storage, manifest.shards)
    patch = sample.array()[0, 1].astype(np.float32)  # lung window, the annotated slice
    hu = patch * 1500.0 - 1350.0
    half_x = (xmax - xmin) * column_spacing / 2
    half_y = (ymax - ymin) * row_spacing / 2
    inside = hu[int(48 - half_y) : int(48 + half_y), int(48 - half_x) : int(48 + half_x)]
    assert np.median(inside) > -150  # soft-tissue tumour, not aerated lung (about -850)
    assert np.median(hu) < np.median(inside)  # and the patch is not all tumour
