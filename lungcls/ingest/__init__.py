"""Stage 1, ingest: inbox archives -> de-identified series in the series store.

archive (open zip/tar/folders safely) -> decode + dicom_series, hu_pixels (CT slices in HU)
-> assemble + ct_volume (group, sort, check geometry) -> deid (pseudonyms, allow-listed
attributes) -> series_store + ledger (the commit point); labels reads each batch's
labels.csv. `run.ingest` wires them together and returns a `summary.IngestSummary`."""
