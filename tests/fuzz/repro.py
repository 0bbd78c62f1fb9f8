"""Replay one saved fuzz input against its target, with the full traceback.

python -m tests.fuzz.repro TARGET INPUT_FILE
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

from tests.fuzz.known import STRICT
from tests.fuzz.package import make_package
from tests.fuzz.targets import TARGETS, use_package


def main() -> None:
    name, path = sys.argv[1:3]
    if name in ("verify", "manifest"):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            folder = Path(tempfile.mkdtemp()) / "made"
            package = make_package(folder)
        use_package(package, folder / "trusted-public.pem")
    TARGETS[name](Path(path).read_bytes())
    print(f"{name}: no crash on {path}" + ("" if STRICT else " (known issues skipped)"))


if __name__ == "__main__":
    main()
