"""Writes edgeq/tokenizer/unicode_classes.json: the \\p{L} and \\p{N} code point ranges of this
Python's unicodedata, which the byte-level BPE pre-tokenizers load instead of scanning every
code point at each start. Rerun it under the Python whose Unicode version the package should
ship (other versions still work: they scan once per process).

    python tests/golden/make_unicode_classes.py
"""

import json

from edgeq.tokenizer.pretokenize import CLASS_TABLE, category_ranges

if __name__ == "__main__":
    CLASS_TABLE.write_text(json.dumps(category_ranges(), separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {CLASS_TABLE}")
