"""Scale-out: ingest on a Ray cluster (`ingest.py`) and search across index shards (`shards.py`).

Ray is optional (`pip install "docqa[ray]"`); nothing here imports it until a Ray feature is used.
"""
