"""A stand-in for LibreOffice's conversion worker (same JSON-lines protocol, see
docqa/inputs/uno_worker.py): it sleeps forever on a document containing HANG, and otherwise
writes a one-page PDF. Its pid goes to <stage>/pids, so a test can check that it was killed."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from PIL import Image


def main() -> None:
    stage = Path(sys.argv[-1])
    with open(stage / "pids", "a") as pids:
        pids.write(f"{os.getpid()}\n")
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if b"HANG" in Path(request["in"]).read_bytes():
            time.sleep(3600)
        Image.new("RGB", (200, 280), "white").save(request["out"], format="PDF")
        print(json.dumps({"ok": True}), flush=True)


if __name__ == "__main__":
    main()
