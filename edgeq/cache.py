"""The conversion cache: a .gguf given to edgeq.load is converted once, then reused.

Location: $EDGEQ_CACHE, else ~/.cache/edgeq. Each entry is one .eqm file named
"<stem>-<key>.eqm", where key is the first 20 hex digits of a SHA-256 over the source's
identity and the conversion options:
    resolved path, size, modification time (ns), the SHA-256 of its first and last MiB,
    the .eqm format version, CACHE_VERSION, and the options (qtype, group_size, ...).
Editing or replacing the source changes its size, time or hashed ends, so a stale entry is
never used; changing the options makes a separate entry. Entries are written atomically
(PackedWriter), so concurrent loads at worst convert twice. Nothing is evicted automatically:
delete the folder to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from edgeq import format as eqm

log = logging.getLogger(__name__)

#: bump when the converter's output changes for the same input and options
CACHE_VERSION = 1
#: edgeq.load options that belong to the conversion, not to the model
CONVERT_OPTIONS = ("qtype", "group_size", "symmetric", "quantize_embeddings")
_END_BYTES = 1 << 20


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEQ_CACHE") or Path.home() / ".cache" / "edgeq").expanduser()


def source_key(path: Path, options: dict) -> str:
    """Hex key of the file's identity plus the conversion options."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_END_BYTES))
        if st.st_size > _END_BYTES:
            f.seek(max(_END_BYTES, st.st_size - _END_BYTES))
            h.update(f.read(_END_BYTES))
    identity = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "ends": h.hexdigest(), "format": eqm.MAJOR, "cache": CACHE_VERSION,
                "options": options}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def converted(path, *, directory=None, **options) -> Path:
    """The cached .eqm for the model at `path` (converted now if absent), options as for
    edgeq.converters.convert.convert; `directory` overrides cache_dir()."""
    from edgeq.converters.convert import convert  # the converters are needed only on a miss

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    folder = cache_dir() if directory is None else Path(directory)
    target = folder / f"{path.stem}-{source_key(path, options)}.eqm"
    if target.is_file():
        log.debug("using cached conversion %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s into the cache: %s", path, target)
    return convert(path, target, **options)


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def prepare(path, options: dict) -> tuple[Path, dict]:
    """For edgeq.load: a GGUF source becomes its cached .eqm (converted with the conversion
    options among `options`); returns the file to open and the remaining (model) options."""
    path = Path(path)
    if not path.is_file() or not is_gguf(path):
        return path, dict(options)
    conversion = {k: v for k, v in options.items() if k in CONVERT_OPTIONS}
    rest = {k: v for k, v in options.items() if k not in CONVERT_OPTIONS}
    return converted(path, **conversion), rest
