"""Model families: each module registers the architectures it runs (name -> builder)."""

import importlib
from typing import Callable

from edgeq.errors import UnsupportedError

ARCHITECTURES: dict[str, Callable] = {}
#: modules that register architectures, imported on first use
FAMILIES = ("edgeq.models.llama", "edgeq.models.bert")


def register(*names: str):
    def add(builder: Callable) -> Callable:
        for name in names:
            ARCHITECTURES[name] = builder
        return builder
    return add


def build_model(packed, **options):
    arch = packed.config["architecture"]
    for module in FAMILIES:  # only until the architecture is known: a family's imports cost
        if arch in ARCHITECTURES:
            break
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
    if arch not in ARCHITECTURES:
        raise UnsupportedError(f"{packed.path}: architecture {arch!r} is not supported; "
                               f"known: {', '.join(sorted(ARCHITECTURES)) or 'none'}")
    return ARCHITECTURES[arch](packed, **options)
