"""The committed generated code is exactly what ``make proto`` makes from ``protos/``."""

from __future__ import annotations

from pathlib import Path

from msgin5g_devstack import protogen


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    generated = protogen.generate(tmp_path)
    committed_dir = protogen.OUTPUT_ROOT / protogen.PACKAGE
    committed = sorted(
        p.name for p in committed_dir.iterdir() if p.is_file() and p.name != "__init__.py"
    )
    assert [p.name for p in generated] == committed, "run 'make proto' and commit the result"
    for path in generated:
        assert path.read_bytes() == (committed_dir / path.name).read_bytes(), (
            f"{path.name} drifted from protos/: run 'make proto' and commit the result"
        )


def test_every_proto_declares_the_versioned_package() -> None:
    for proto in protogen.proto_files():
        assert "package msgin5g.v1;" in proto.read_text(), proto.name
