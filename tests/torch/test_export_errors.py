"""Export to a place that cannot be written: ExportError, and no file or new folder left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import nncompress as nnc
from nncompress.errors import ExportError, InvalidArgumentError
from nncompress.torch.export import export_onnx
from tests.algorithms.helpers import sparsity_config
from tests.model_zoo import ResidualCNN

INPUTS = ((torch.randn(2, 1, 8, 8),), {})


class _Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this model cannot be traced")


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_folder_under_a_file(cnn: ResidualCNN, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    ctrl, _ = nnc.create_compressed_model(cnn, sparsity_config())
    with pytest.raises(ExportError, match=r"notes\.txt' is a file, not a folder"):
        ctrl.export_model(str(tmp_path / "notes.txt" / "out" / "model.onnx"))
    assert _tree(tmp_path) == ["notes.txt"]


def test_folder_that_cannot_be_created_leaves_no_new_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a read-only folder: the folders made before the failing one are removed again."""
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(ExportError, match=r"cannot create the folder '.*locked' for the export: Permission denied"):
        export_onnx(ResidualCNN(), INPUTS, tmp_path / "new" / "locked" / "deeper" / "m.onnx")
    assert _tree(tmp_path) == []


def test_read_only_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that cannot be created in a read-only parent. Root may write into a read-only
    folder, and CI runs as root, so the refusal the OS gives other users is simulated as well."""
    locked = tmp_path / "ro"
    locked.mkdir()
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self.parent == locked:
            raise PermissionError(13, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", mkdir)
    locked.chmod(0o500)
    try:
        with pytest.raises(ExportError, match=r"cannot create the folder '.*sub' for the export: Permission denied"):
            export_onnx(ResidualCNN(), INPUTS, locked / "sub" / "m.onnx")
        assert _tree(tmp_path) == ["ro"]
    finally:
        locked.chmod(0o700)


def test_failed_export_removes_the_folders_it_made(tmp_path: Path) -> None:
    (tmp_path / "kept").mkdir()
    with pytest.raises(ExportError, match="this model cannot be traced"):
        export_onnx(_Broken(), INPUTS, tmp_path / "kept" / "a" / "b" / "m.onnx")
    assert _tree(tmp_path) == ["kept"]  # the folder that was there stays


def test_existing_folder_as_the_file(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(ExportError, match="model.onnx"):
        export_onnx(ResidualCNN(), INPUTS, tmp_path / "model.onnx")
    assert _tree(tmp_path) == ["model.onnx"]


def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ExportError, match="is a file, not a folder"):
        export_onnx(ResidualCNN(), INPUTS, tmp_path / "f" / "m.onnx")


@pytest.mark.parametrize("bad", ["", 3])
def test_save_path_that_names_no_file(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="save_path"):
        export_onnx(ResidualCNN(), INPUTS, bad)  # type: ignore[arg-type]


def test_new_nested_folders_are_made_on_success(tmp_path: Path) -> None:
    export_onnx(ResidualCNN().eval(), INPUTS, tmp_path / "x" / "y" / "m.onnx")
    assert _tree(tmp_path) == ["x", "x/y", "x/y/m.onnx"]
