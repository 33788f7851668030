"""The README's commands work as written: a bash block marked `<!-- readme-test -->` runs in
a scratch folder with this interpreter's scripts first on PATH, and its output is checked."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MARKED_BLOCK = re.compile(r"<!-- readme-test -->\n```bash\n(.*?)```", re.S)


def marked_blocks() -> list[str]:
    return MARKED_BLOCK.findall(README.read_text(encoding="utf-8"))


def run_block(block: str, cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_embedding_walkthrough_runs(tmp_path):
    """Convert all-MiniLM-L6-v2, embed two sentences, compare them: as the README shows it."""
    [block] = [b for b in marked_blocks() if "edgeq embed" in b]
    lines = run_block(block, tmp_path).splitlines()
    embeddings = [json.loads(line) for line in lines if line.startswith("{")]
    assert [e["text"] for e in embeddings] == ["A man is playing a guitar.",
                                               "Someone plays an instrument."]
    assert all(len(e["embedding"]) == 384 for e in embeddings)
    similarity = float(lines[-1])
    assert 0.3 < similarity < 1.0  # related sentences; unrelated ones score near 0
    assert (tmp_path / "minilm.eqm").stat().st_size > 0
