import numpy as np
import pytest
from PIL import Image

from convae import data
from convae.data.synthetic import DEFECTS, defect, inspection_set, texture
from convae.errors import ConvaeError


def test_the_synthetic_set_has_mvtec_s_layout_and_exact_masks(tmp_path):
    root = inspection_set(tmp_path / "set", normal=6, test_normal=2, per_defect=2, size=32)
    ds = data.load(f"mvtec:{root}")
    assert ds.x_train.shape == (6, 1, 32, 32) and ds.y_train is None
    assert ds.classes == ["good", "hole", "scratch", "stain"] and ds.y_test.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ds.masks.shape == (8, 1, 32, 32) and ds.masks.dtype == np.uint8
    assert not ds.masks[:2].any() and all(ds.masks[i].any() for i in range(2, 8))  # good: none; defects: some
    assert [f.parent.name for f in ds.test_files] == ["good"] * 2 + ["hole"] * 2 + ["scratch"] * 2 + ["stain"] * 2
    resized = data.load(f"mvtec:{root}", image_size=(16, 16), channels=3)
    assert resized.x_test.shape == (8, 3, 16, 16) and set(np.unique(resized.masks)) <= {0, 1}


def test_each_defect_changes_the_image_inside_its_mask_and_nowhere_else():
    rng = np.random.default_rng(0)
    for kind in DEFECTS:
        clean = texture(np.random.default_rng(1), 64)
        image, mask = defect(rng, clean, kind)
        changed = np.abs(image - clean) > 1e-9
        assert mask.any() and not changed[~mask & (np.abs(image - clean) > 0.1)].any(), kind
        assert np.abs(image - clean)[mask].mean() > 0.1, kind  # visible inside the mask
    with pytest.raises(ValueError, match="unknown defect kind"):
        defect(rng, clean, "dent")


def test_mvtec_layout_mistakes_are_one_line_naming_the_file(tmp_path):
    root = inspection_set(tmp_path / "set", normal=2, test_normal=1, per_defect=1, size=16, kinds=("hole",))
    mask = root / "ground_truth" / "hole" / "000_mask.png"
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(mask)
    with pytest.raises(ConvaeError, match=r"000_mask.png: the mask is 16x8 pixels, its image 16x16"):
        data.load(f"mvtec:{root}")
    mask.unlink()
    with pytest.raises(ConvaeError, match=r"000_mask.png: no such file: the mask of"):
        data.load(f"mvtec:{root}")
    (root / "ground_truth" / "hole").rmdir()
    with pytest.raises(ConvaeError, match=r"ground_truth/hole: no such folder: defect type 'hole' has no masks"):
        data.load(f"mvtec:{root}")
    with pytest.raises(ConvaeError, match=r"no images in train/good"):
        data.load(f"mvtec:{tmp_path}")


def test_scoring_an_inspection_run_without_defective_test_images_is_one_line(tmp_path, capsys):
    from helpers import train_inspection_run

    from convae.cli import main

    layout = dict(normal=8, test_normal=2, per_defect=0, size=16, kinds=())
    out = train_inspection_run(tmp_path, "conv(4,3,stride=2) relu", "--epochs", "1", "--batch-size", "4", **layout)
    capsys.readouterr()
    assert main(["score", str(out), "--summary", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert "needs good and defective images" in err and err.count("\n") == 1 and not (tmp_path / "s.json").exists()
