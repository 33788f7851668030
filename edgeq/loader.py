"""edgeq.load: a runnable model when the file holds one, else the PackedFile."""

from pathlib import Path

from edgeq.format import PackedFile, open_packed
from edgeq.models import build_model


def load(path, **options):
    """Open `path` (.eqm) and return the model its config names, or the PackedFile itself."""
    packed = open_packed(Path(path))
    arch = (packed.config or {}).get("architecture")
    if arch is None:
        return packed
    return build_model(packed, **options)
