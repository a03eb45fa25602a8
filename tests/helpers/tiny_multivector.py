"""Tiny retriever checkpoints for the sentence-transformers loader, built offline from the tiny
native ones (tests/helpers/tiny_retrievers.py): a ``MultiVectorEncoder`` saved with ``save_pretrained``, and
a remote-code retriever whose modeling file is written into its folder, as a hub repo ships it."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

REMOTE_MODULE = "modeling_tiny_col"
REMOTE_TYPE = "tiny_remote_col"

_MODELING = textwrap.dedent(f'''\
    """A retriever family transformers does not know: ColPali under another name, run from this file."""
    from transformers import ColPaliConfig, ColPaliForRetrieval


    class TinyRemoteColConfig(ColPaliConfig):
        model_type = "{REMOTE_TYPE}"


    class TinyRemoteColForRetrieval(ColPaliForRetrieval):
        config_class = TinyRemoteColConfig
''')


def build_multivector_checkpoint(native: Path, out_dir: Path) -> Path:
    """Load the native checkpoint ``native`` as a MultiVectorEncoder and save it with save_pretrained."""
    from sentence_transformers import MultiVectorEncoder

    encoder = MultiVectorEncoder(str(native), device="cpu", local_files_only=True)
    encoder.save_pretrained(str(out_dir))
    return Path(out_dir)


def build_remote_code_checkpoint(colpali: Path, out_dir: Path) -> Path:
    """A copy of the tiny ColPali checkpoint whose config names a model type and classes that only
    its own ``modeling_tiny_col.py`` defines (config.json ``auto_map``)."""
    out_dir = Path(shutil.copytree(colpali, out_dir))
    (out_dir / f"{REMOTE_MODULE}.py").write_text(_MODELING)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config.update(
        model_type=REMOTE_TYPE,
        architectures=["TinyRemoteColForRetrieval"],
        auto_map={
            "AutoConfig": f"{REMOTE_MODULE}.TinyRemoteColConfig",
            "AutoModel": f"{REMOTE_MODULE}.TinyRemoteColForRetrieval",
        },
    )
    config_path.write_text(json.dumps(config, indent=2))
    return out_dir
