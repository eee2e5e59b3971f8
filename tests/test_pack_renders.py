"""scripts.pack_renders: a packed and unpacked dataset gives the model the same pixels, ids and programs."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from cad.data import FEATURES, load_gencad, to_image, undecoded
from scripts.pack_renders import main, read_pack
from sft.image_processing import ImageProcessor


@pytest.fixture
def dataset(tmp_path):
    import datasets

    rows = {k: [] for k in FEATURES}
    for i in range(7):
        img = Image.new("RGB", (448, 448), "white")
        ImageDraw.Draw(img).rectangle([40 + 20 * i, 60, 300, 200 + 10 * i], fill=(150, 150, 150), outline="black", width=3)
        rows["image"].append(img)
        rows["deepcad_id"].append(f"part/{i}")
        rows["cadquery"].append(f"import cadquery as cq\nsolid = cq.Workplane('XY').box({i + 1}, 2, 3)\n")
        rows["token_count"].append(10)
        rows["prompt"].append("p")
        rows["hundred_subset"].append(i % 2 == 0)
    src = tmp_path / "src"
    src.mkdir()
    datasets.Dataset.from_dict(rows, features=FEATURES).to_parquet(str(src / "train-00000.parquet"))
    return src


def test_pack_then_unpack_gives_the_model_the_same_arrays(tmp_path, dataset, capsys):
    pack = tmp_path / "train.pack.xz"
    assert main(["pack", str(dataset), "--split", "train", "--size", "64", "--out", str(pack)]) == 0
    header, rows, images = read_pack(pack)
    assert header["rows"] == 7 and images.shape == (7, 1, 64, 64)
    assert main(["unpack", str(pack), "--out", str(tmp_path / "out"), "--workers", "2"]) == 0
    a, b = undecoded(load_gencad(dataset, split="train")), undecoded(load_gencad(tmp_path / "out", split="train"))
    assert a["deepcad_id"] == b["deepcad_id"] and a["cadquery"] == b["cadquery"]
    assert a["hundred_subset"] == b["hundred_subset"]
    proc = ImageProcessor(64, 1)
    for ra, rb in zip(a, b):
        assert np.array_equal(proc.to_array(to_image(ra["image"])), proc.to_array(to_image(rb["image"])))


def test_bad_arguments_get_one_line_and_exit_2(tmp_path, dataset, capsys):
    assert main(["pack", str(dataset), "--split", "train", "--size", "0", "--out", str(tmp_path / "p.xz")]) == 2
    assert main(["pack", str(dataset), "--split", "test", "--out", str(tmp_path / "p.xz")]) == 2
    not_a_pack = tmp_path / "x.xz"
    import lzma

    not_a_pack.write_bytes(lzma.compress(b"hello"))
    assert main(["unpack", str(not_a_pack), "--out", str(tmp_path / "o")]) == 2
    assert main(["unpack", str(tmp_path / "missing.xz"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 4 and "Traceback" not in err
