"""Ingest: plan what to index, encode it (threaded locally, or on Ray) and write it to the index."""
