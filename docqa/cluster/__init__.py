"""Scale-out: connecting to Ray (`ray_runtime.py`) and search across index shards (`shards.py`).

Ray is optional (`pip install "docqa[ray]"`); nothing here imports it until a Ray feature is used.
"""
