"""edgeq.load: a runnable model when the file holds one, else the PackedFile."""

from edgeq.cache import prepare
from edgeq.format import open_packed
from edgeq.models import build_model

#: names of the static activation scale tensors end so (edgeq.calibrate.static.SUFFIX)
STATIC_SCALE_SUFFIX = ".input_scale"


def load(path, **options):
    """Open `path` and return the model its config names, or the PackedFile itself.

    path: an .eqm file, or a .gguf file (converted once into the cache folder, see
    edgeq.cache; conversion options such as qtype= and group_size= are passed on).
    Other options go to the model (e.g. context_length=, backend=). Calibrated static
    activation scales stored in the file (edgeq.calibrate.static) are installed.
    """
    path, options = prepare(path, options)
    packed = open_packed(path)
    arch = (packed.config or {}).get("architecture")
    if arch is None:
        return packed
    model = build_model(packed, **options)
    if any(name.endswith(STATIC_SCALE_SUFFIX) for name in packed):
        from edgeq.calibrate.static import install  # only files made with static activations
        install(model, packed)
    return model
