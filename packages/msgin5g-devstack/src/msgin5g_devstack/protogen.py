"""Generates the Python code of the protobuf contract (``make proto``).

The output is committed under ``packages/msgin5g-common/src/msgin5g/v1``; a test regenerates
it into a temporary folder and fails when the committed copy drifts. The generator is pinned
by the grpcio-tools and mypy-protobuf versions in ``requirements/constraints.txt``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
PROTO_ROOT = REPO / "protos"
OUTPUT_ROOT = REPO / "packages" / "msgin5g-common" / "src"
PACKAGE = Path("msgin5g") / "v1"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Writes the generated modules for every proto file under ``out_root``; returns them."""
    plugin_dir = Path(sys.executable).parent
    (out_root / PACKAGE).mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_ROOT)
    return sorted(p for p in (out_root / PACKAGE).iterdir() if p.name != "__init__.py")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        target = OUTPUT_ROOT / PACKAGE
        for old in target.iterdir():
            if old.name not in ("__init__.py", "__pycache__"):
                old.unlink()
        for path in generated:
            shutil.copy2(path, target / path.name)


if __name__ == "__main__":
    main()
