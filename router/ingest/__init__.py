"""Reading traffic: Parquet / CSV / JSON Lines readers, column mapping, validation and
the rejects file."""
