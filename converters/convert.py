"""convert(src, dst, **options): one entry point for every source format.

The source kind is detected from the path (see SOURCES, checked in order); its importer is
imported on first use and called as importer(src, dst, **options) -> Path. To add a source,
add a detector and an importer entry to SOURCES.

Options understood by the GGUF importer (converters.gguf_import.import_gguf):
    qtype "keep" | "int8" | "int4" | "ternary" | "binary" | "pow2", group_size, symmetric,
    quantize_embeddings, progress (a bar on stderr; None: only when stderr is a terminal).
The HF importer (converters.hf_import.convert_hf) takes the same and its own extras.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from edgeq.cache import is_gguf
from edgeq.errors import UnsupportedError


def _is_gguf(path: Path) -> bool:
    return path.is_file() and is_gguf(path)


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


#: kind -> (detector, "module:function" of its importer)
SOURCES: dict[str, tuple[Callable[[Path], bool], str]] = {
    "gguf": (_is_gguf, "edgeq.converters.gguf_import:import_gguf"),
    "hf": (_is_hf_folder, "edgeq.converters.hf_import:convert_hf"),
}


def source_kind(src) -> str:
    """The SOURCES key describing `src`; UnsupportedError (or FileNotFoundError) otherwise."""
    path = Path(src)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    for kind, (detect, _) in SOURCES.items():
        if detect(path):
            return kind
    raise UnsupportedError(f"{path}: not a source edgeq converts (a .gguf file or a Hugging Face "
                           f"folder with config.json)")


def convert(src, dst, **options) -> Path:
    """Convert the model at `src` into the .eqm file `dst`; returns dst."""
    module, function = SOURCES[source_kind(src)][1].split(":")
    importer = getattr(importlib.import_module(module), function)
    return importer(Path(src), Path(dst), **options)
