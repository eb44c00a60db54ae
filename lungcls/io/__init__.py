"""Storage and the plumbing every stage shares: one storage helper over fsspec (local
folder, S3), numbered versions committed by a marker, typed records with a schema tag, run
ids, the quarantine, and the Ray plumbing that fans work out."""
