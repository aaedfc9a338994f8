"""Run every ```python block of the documentation, each in a fresh interpreter, and report those that fail.

    python docs/run_snippets.py [FILE.md ...]      # default: README.md and every page under docs/

Blocks fenced as ```py are illustrations (they need a cluster or names they do not define) and are skipped.
manycore is imported from this checkout's src/. Not part of the test suite: the snippets start real pools
(about a minute in all on 2 cores).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def main(paths: list[str]) -> int:
    files = [pathlib.Path(p) for p in paths] or [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            for n, match in enumerate(BLOCK.finditer(path.read_text())):
                script = pathlib.Path(tmp, "snippet.py")
                script.write_text(match.group(1))
                run = subprocess.run(
                    [sys.executable, str(script)],
                    capture_output=True,
                    text=True,
                    timeout=300,
                    env=env,
                    cwd=tmp,
                )
                ok = run.returncode == 0
                failed += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {path.relative_to(ROOT)} block {n + 1}")
                if not ok:
                    print(run.stdout + run.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
