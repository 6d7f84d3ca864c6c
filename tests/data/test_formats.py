"""Dataset readers on small fixtures built here, each with the real layouts' quirks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from unetlab.data.formats.camvid import (CAMVID_CLASSES, CAMVID_COLOURS, read_camvid, read_palette_masks,
                                         read_rgb_masks, rgb_to_index)
from unetlab.data.formats.folders import read_folders
from unetlab.data.formats.isbi import read_isbi
from unetlab.data.formats.oxford_pet import read_oxford_pet
from unetlab.data.formats.registry import FORMATS, read_dataset, resolve_format
from unetlab.data.formats.samples import SegmentationSamples
from unetlab.data.dataset import ArrayDataset
from unetlab.data.io import read_image, read_index_mask
from unetlab.errors import DataError

RNG = np.random.default_rng(0)


def rgb(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, array_or_image, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    image.save(path, format=fmt)
    return path


def png16(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint16)).save(path, format="PNG")
    return path


# --- io additions ------------------------------------------------------------------------------------

def test_read_image_keeps_channels_and_decodes_by_content(tmp_path):
    colour = rgb(6, 5)
    assert read_image(save(tmp_path / "a.png", colour)).shape == (6, 5, 3)
    rgba = np.dstack([colour, np.full((6, 5), 7, np.uint8)])
    np.testing.assert_array_equal(read_image(save(tmp_path / "b.jpg", rgba, "PNG")), colour)  # PNG named .jpg
    grey = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    assert read_image(save(tmp_path / "c.png", grey)).shape == (6, 5)
    assert read_image(tmp_path / "c.png", channels=3).shape == (6, 5, 3)
    sixteen = png16(tmp_path / "d.png", np.array([[0, 1000], [2000, 4000]]))
    np.testing.assert_array_equal(read_image(sixteen), [[0, 64], [128, 255]])


def test_read_image_tiff_n_channels_and_planar(tmp_path):
    bands = RNG.integers(0, 256, (7, 6, 5), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "hwc.tif", bands, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(read_image(tmp_path / "hwc.tif"), bands)
    tifffile.imwrite(tmp_path / "chw.tif", np.moveaxis(bands, -1, 0), photometric="minisblack")  # band pages
    np.testing.assert_array_equal(read_image(tmp_path / "chw.tif"), bands)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(bands[..., :3], -1, 0), photometric="rgb",
                     planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), bands[..., :3])
    rgba = np.dstack([bands[..., :3], np.full((7, 6), 9, np.uint8)])
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.tif"), bands[..., :3])  # alpha dropped
    sixteen = np.array([[0, 1000], [2000, 4000]], np.uint16)
    tifffile.imwrite(tmp_path / "16.tif", sixteen)
    np.testing.assert_array_equal(read_index_mask(tmp_path / "16.tif"), sixteen)


def test_read_index_mask_values_kept(tmp_path):
    np.testing.assert_array_equal(read_index_mask(png16(tmp_path / "m.png", np.array([[0, 65535]]))), [[0, 65535]])
    assert read_index_mask(tmp_path / "m.png").dtype == np.int64
    small = save(tmp_path / "s.png", np.array([[0, 3]], np.uint8))
    assert read_index_mask(small).dtype == np.uint8
    with pytest.raises(DataError, match="c.png.*colour"):
        read_index_mask(save(tmp_path / "c.png", rgb(3, 3)))


# --- folders -----------------------------------------------------------------------------------------

def test_folders_suffixes_16bit_masks_and_binary_rule(tmp_path):
    for name, size in (("cat", (8, 6)), ("dog", (5, 9))):
        save(tmp_path / "images" / f"{name}.jpg", rgb(*size), "JPEG")
        mask = np.zeros(size, np.uint16)
        mask[1:3, 1:3] = 65535
        png16(tmp_path / "masks" / f"{name}_mask.png", mask)
    with pytest.raises(DataError, match=r"cat_mask\.png.*binary_rule='nonzero'"):
        read_folders(tmp_path, mask_suffix="_mask")
    samples = read_folders(tmp_path, mask_suffix="_mask", binary_rule="nonzero")
    assert samples.ids == ["cat", "dog"] and len(samples) == 2
    assert samples.class_names == ["background", "foreground"]
    assert samples.images[0].shape == (8, 6, 3) and samples.images[1].shape == (5, 9, 3)
    assert samples.masks[0].dtype == np.uint8 and set(np.unique(samples.masks[0])) == {0, 1}
    assert samples.meta["cat"]["mask"].endswith("cat_mask.png")


def test_folders_0_255_masks_refused_for_two_classes(tmp_path):
    save(tmp_path / "images" / "a.png", rgb(4, 4))
    save(tmp_path / "masks" / "a.png", np.array([[0, 0, 255, 255]] * 4, np.uint8))
    with pytest.raises(DataError, match=r"masks/a\.png.*values \[255\].*binary_rule"):
        read_folders(tmp_path)
    assert read_folders(tmp_path, binary_rule="nonzero").mask_values() == [0, 1]


def test_folders_tiff_n_channel_images_and_multiclass(tmp_path):
    for k in range(3):
        tifffile.imwrite(_mkdir(tmp_path / "img") / f"t{k}.tif", RNG.integers(0, 256, (6, 7, 4), dtype=np.uint8),
                         photometric="minisblack", planarconfig="contig")
        save(tmp_path / "lab" / f"t{k}.png", np.full((6, 7), k * 2, np.uint8))
    samples = read_folders(tmp_path, images="img", masks="lab")
    assert [im.shape for im in samples.images] == [(6, 7, 4)] * 3
    assert samples.class_names == [f"class_{k}" for k in range(5)]
    assert read_folders(tmp_path, images="img", masks="lab", num_classes=6).class_names[-1] == "class_5"
    with pytest.raises(DataError, match=r"t2\.png.*outside classes 0\.\.2"):
        read_folders(tmp_path, images="img", masks="lab", num_classes=3)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_folders_grey_among_rgb_becomes_rgb(tmp_path):
    save(tmp_path / "images" / "a.png", rgb(4, 4))
    save(tmp_path / "images" / "b.png", np.zeros((4, 4), np.uint8))
    for n in "ab":
        save(tmp_path / "masks" / f"{n}.png", np.zeros((4, 4), np.uint8))
    samples = read_folders(tmp_path)
    assert samples.images[1].shape == (4, 4, 3)
    assert read_folders(tmp_path, channels=1).images[0].shape == (4, 4)


@pytest.mark.parametrize("case, match", [
    ("orphan_mask", r"masks/b\.png: mask without its image"),
    ("orphan_image", r"images/b\.png: image without its mask"),
    ("duplicate", r"images/a\.png: duplicate image id 'a' \(also a\.jpg\)"),
    ("corrupt", r"images/a\.png: cannot decode"),
    ("size", r"masks/a\.png.*differs from its image"),
    ("suffix", r"masks/a\.png: mask name does not end with '_mask'"),
    ("no_masks", r"masks: mask folder not found"),
])
def test_folders_errors_name_the_file(tmp_path, case, match):
    save(tmp_path / "images" / "a.png", rgb(4, 4))
    save(tmp_path / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    options = {}
    if case == "orphan_mask":
        save(tmp_path / "masks" / "b.png", np.zeros((4, 4), np.uint8))
    elif case == "orphan_image":
        save(tmp_path / "images" / "b.png", rgb(4, 4))
    elif case == "duplicate":
        save(tmp_path / "images" / "a.jpg", rgb(4, 4), "JPEG")
    elif case == "corrupt":
        (tmp_path / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif case == "size":
        save(tmp_path / "masks" / "a.png", np.zeros((3, 4), np.uint8))
    elif case == "suffix":
        options = {"mask_suffix": "_mask"}
    elif case == "no_masks":
        (tmp_path / "masks" / "a.png").unlink()
        (tmp_path / "masks").rmdir()
    with pytest.raises(DataError, match=match):
        read_folders(tmp_path, **options)


# --- Oxford-IIIT Pet ---------------------------------------------------------------------------------

def make_pet(root: Path, with_list: bool = True) -> dict[str, np.ndarray]:
    trimaps = {}
    specs = {"Abyssinian_1": "JPEG", "Abyssinian_34": "PNG+alpha", "Egyptian_Mau_14": "GIF",
             "american_bulldog_10": "JPEG"}
    for k, (name, kind) in enumerate(specs.items()):
        h, w = 10 + k, 12
        image = rgb(h, w)
        if kind == "JPEG":
            save(root / "images" / f"{name}.jpg", image, "JPEG")
        elif kind == "PNG+alpha":
            save(root / "images" / f"{name}.jpg", np.dstack([image, np.full((h, w), 200, np.uint8)]), "PNG")
        else:
            save(root / "images" / f"{name}.jpg", Image.fromarray(image).convert("P"), "GIF")
        trimap = np.full((h, w), 2, np.uint8)
        trimap[2:7, 3:9] = 3
        trimap[3:6, 4:8] = 1
        save(root / "annotations" / "trimaps" / f"{name}.png", trimap)
        trimaps[name] = trimap
    (root / "images" / "Abyssinian_1.mat").write_bytes(b"MATLAB")  # the real images folder holds a few
    (root / "annotations" / "trimaps" / "._Abyssinian_1.png").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble
    if with_list:
        (root / "annotations" / "trainval.txt").write_text(
            "Abyssinian_1 1 1 1\nAbyssinian_34 1 1 1\nEgyptian_Mau_14 6 1 6\n")
        (root / "annotations" / "test.txt").write_text("american_bulldog_10 2 2 1\n")
    return trimaps


def test_oxford_pet_split_border_and_content_decoding(tmp_path):
    trimaps = make_pet(tmp_path)
    samples = read_oxford_pet(tmp_path)
    assert samples.ids == ["Abyssinian_1", "Abyssinian_34", "Egyptian_Mau_14"]
    assert all(im.ndim == 3 and im.shape[-1] == 3 for im in samples.images)  # PNG+alpha and GIF -> RGB
    assert samples.ignore_index == 255 and samples.class_names == ["background", "pet"]
    trimap, mask = trimaps["Abyssinian_1"], samples.masks[0]
    assert (mask[trimap == 1] == 1).all() and (mask[trimap == 2] == 0).all() and (mask[trimap == 3] == 255).all()
    assert samples.meta["Egyptian_Mau_14"]["species"] == "cat"
    pet = read_oxford_pet(tmp_path, border="pet")
    assert pet.ignore_index is None and (pet.masks[0][trimap == 3] == 1).all()
    background = read_oxford_pet(tmp_path, border="background")
    assert (background.masks[0][trimap == 3] == 0).all()
    assert read_oxford_pet(tmp_path, split="test").ids == ["american_bulldog_10"]


def test_oxford_pet_without_list_reads_all_trimaps(tmp_path):
    make_pet(tmp_path, with_list=False)
    assert len(read_oxford_pet(tmp_path)) == 4


@pytest.mark.parametrize("case, match", [
    ("bad_value", r"trimaps/Abyssinian_1\.png: trimap values \[4\]"),
    ("listed_missing", r"trainval\.txt: 'Bengal_9' has no image"),
    ("size", r"trimaps/Abyssinian_34\.png.*differs from its image"),
    ("border", r"border='edge'"),
    ("corrupt", r"images/Abyssinian_1\.jpg: cannot decode"),
])
def test_oxford_pet_errors(tmp_path, case, match):
    make_pet(tmp_path)
    options = {}
    if case == "bad_value":
        save(tmp_path / "annotations" / "trimaps" / "Abyssinian_1.png", np.full((10, 12), 4, np.uint8))
    elif case == "listed_missing":
        with (tmp_path / "annotations" / "trainval.txt").open("a") as handle:
            handle.write("Bengal_9 3 1 3\n")
    elif case == "size":
        save(tmp_path / "annotations" / "trimaps" / "Abyssinian_34.png", np.full((3, 3), 2, np.uint8))
    elif case == "border":
        options = {"border": "edge"}
    elif case == "corrupt":
        (tmp_path / "images" / "Abyssinian_1.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DataError, match=match):
        read_oxford_pet(tmp_path, **options)


# --- CamVid ------------------------------------------------------------------------------------------

def make_camvid(root: Path) -> None:
    for split, names in (("train", ["0001TP_006690", "0001TP_006720"]), ("val", ["0016E5_07959"])):
        lines = []
        for k, name in enumerate(names):
            save(root / split / f"{name}.png", rgb(6, 8))
            mask = (np.arange(48).reshape(6, 8) % 12).astype(np.uint8)  # 0..10 and 11 = Unlabelled
            save(root / f"{split}annot" / f"{name}.png", mask)
            lines.append(f"/SegNet/CamVid/{split}/{name}.png /SegNet/CamVid/{split}annot/{name}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


def test_camvid_foreign_prefix_and_unlabelled(tmp_path):
    make_camvid(tmp_path)
    samples = read_camvid(tmp_path)
    assert samples.ids == ["0001TP_006690", "0001TP_006720"]
    assert samples.class_names == CAMVID_CLASSES and samples.ignore_index == 11
    assert samples.palette == CAMVID_COLOURS and len(CAMVID_COLOURS) == len(CAMVID_CLASSES)  # SegNet's colours
    assert samples.to_array_dataset("multiclass").palette == CAMVID_COLOURS  # carried to the trainer's data
    assert read_camvid(tmp_path, split="trainval").palette == CAMVID_COLOURS
    assert samples.mask_values() == list(range(12))
    assert samples.images[0].shape == (6, 8, 3)
    assert samples.meta["0001TP_006690"]["image"] == str(tmp_path / "train" / "0001TP_006690.png")
    assert len(read_camvid(tmp_path, split="val")) == 1
    assert len(read_camvid(tmp_path, split="trainval")) == 3
    (tmp_path / "val.txt").unlink()  # no list: pair by stem
    assert read_camvid(tmp_path, split="val").ids == ["0016E5_07959"]


def test_camvid_errors(tmp_path):
    make_camvid(tmp_path)
    save(tmp_path / "trainannot" / "0001TP_006720.png", np.full((6, 8), 12, np.uint8))
    with pytest.raises(DataError, match=r"trainannot/0001TP_006720\.png: class value 12"):
        read_camvid(tmp_path)
    (tmp_path / "val" / "0016E5_07959.png").unlink()
    with pytest.raises(DataError, match=r"val\.txt: line 1: /SegNet/CamVid/val/0016E5_07959\.png not found"):
        read_camvid(tmp_path, split="val")
    with pytest.raises(DataError, match=r"no test\.txt"):
        read_camvid(tmp_path, split="test")


def test_palette_masks_with_255_boundary(tmp_path):
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (252 * 3) + [224, 224, 192]
    for name in ("2007_000032", "2007_000033"):
        save(tmp_path / "JPEGImages" / f"{name}.jpg", rgb(5, 7), "JPEG")
        index = np.zeros((5, 7), np.uint8)
        index[1:4, 1:6] = 255
        index[2, 2:5] = 1 if name.endswith("2") else 2
        mask = Image.fromarray(index).convert("P")
        mask.putpalette(palette)
        save(tmp_path / "SegmentationClass" / f"{name}.png", mask)
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000033\n")
    samples = read_palette_masks(tmp_path)
    assert samples.ignore_index == 255 and len(samples.class_names) == 21
    assert samples.mask_values() == [0, 1, 2, 255]  # palette indices, not colours
    assert read_palette_masks(tmp_path, split="train").ids == ["2007_000033"]
    message = r"2007_000032\.png \(id '2007_000032'\): mask values \[255\] outside classes 0\.\.2 "
    with pytest.raises(DataError, match=message):
        read_palette_masks(tmp_path, class_names=["a", "b", "c"], ignore_index=None)


def test_rgb_masks_colour_table_and_unknown_colour(tmp_path):
    colours = {(128, 128, 128): 0, (128, 0, 0): 1, (0, 0, 0): 255}
    for name in ("a", "b"):
        save(tmp_path / "images" / f"{name}.png", rgb(4, 4))
        mask = np.zeros((4, 4, 3), np.uint8)
        mask[:2] = (128, 128, 128)
        mask[2, :2] = (128, 0, 0)
        save(tmp_path / "masks" / f"{name}_L.png", mask)
    samples = read_rgb_masks(tmp_path, colours, mask_suffix="_L", ignore_index=255)
    assert samples.class_names == ["class_0", "class_1"]
    np.testing.assert_array_equal(samples.masks[0][:, 0], [0, 0, 1, 255])
    bad = np.zeros((4, 4, 3), np.uint8)
    bad[3, 2] = (64, 0, 128)
    save(tmp_path / "masks" / "b_L.png", bad)
    message = r"masks/b_L\.png: unknown colour \(64, 0, 128\) \(1 pixel\(s\), first at x=2, y=3\)"
    with pytest.raises(DataError, match=message):
        read_rgb_masks(tmp_path, colours, mask_suffix="_L", ignore_index=255)
    with pytest.raises(DataError, match="x.png: unknown colour"):
        rgb_to_index(bad, {}, "x.png")


# --- ISBI 2012 ---------------------------------------------------------------------------------------

def make_isbi(root: Path) -> np.ndarray:
    label = np.full((8, 8), 255, np.uint8)
    label[3, :] = 0
    label[:, 5] = 0
    for k in range(3):
        image = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
        if k == 1:  # TIFF pair
            _mkdir(root / "train" / "image")
            _mkdir(root / "train" / "label")
            tifffile.imwrite(root / "train" / "image" / f"{k}.tif", image)
            tifffile.imwrite(root / "train" / "label" / f"{k}.tif", label)
        else:
            save(root / "train" / "image" / f"{k}.png", image)
            save(root / "train" / "label" / f"{k}.png", label)
    save(root / "train" / "image" / "10.png", np.zeros((8, 8), np.uint8))
    save(root / "train" / "label" / "10.png", label)
    return label


def test_isbi_cells_and_membranes(tmp_path):
    label = make_isbi(tmp_path)
    cells = read_isbi(tmp_path)
    assert cells.ids == ["0", "1", "2", "10"]  # numeric order
    assert cells.class_names == ["membrane", "cell"]
    np.testing.assert_array_equal(cells.masks[1], label == 255)
    assert cells.images[1].shape == (8, 8)
    membranes = read_isbi(tmp_path, foreground=0)
    np.testing.assert_array_equal(membranes.masks[0], label == 0)
    data = membranes.to_array_dataset("binary")
    assert isinstance(data, ArrayDataset) and data.images.shape == (4, 8, 8) and data.masks.dtype == bool


def test_isbi_stacks_and_errors(tmp_path):
    volume = RNG.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    labels = np.where(RNG.random((3, 8, 8)) > 0.3, 255, 0).astype(np.uint8)
    tifffile.imwrite(tmp_path / "train-volume.tif", volume, photometric="minisblack")
    tifffile.imwrite(tmp_path / "train-labels.tif", labels, photometric="minisblack")
    samples = read_isbi(tmp_path)
    assert len(samples) == 3 and samples.masks[2].sum() == (labels[2] == 255).sum()
    other = tmp_path / "slices"
    make_isbi(other)
    save(other / "train" / "label" / "2.png", np.full((8, 8), 128, np.uint8))
    with pytest.raises(DataError, match=r"label/2\.png: label values \[128\]"):
        read_isbi(other)
    with pytest.raises(DataError, match="foreground=1"):
        read_isbi(other, foreground=1)


# --- SegmentationSamples and the registry ------------------------------------------------------------

def samples_of(sizes, values=(0, 1)) -> SegmentationSamples:
    ids = [f"s{k}" for k in range(len(sizes))]
    masks = [np.full(size, values[k % len(values)], np.uint8) for k, size in enumerate(sizes)]
    return SegmentationSamples(ids=ids, images=[np.zeros(size, np.uint8) for size in sizes], masks=masks,
                               class_names=["background", "foreground"], ignore_index=None, root=Path("r"),
                               meta={i: {"mask": f"r/masks/{i}.png"} for i in ids})


def test_binary_array_dataset_equal_sizes_and_refusals(tmp_path):
    data = samples_of([(4, 5)] * 3).to_array_dataset("binary")
    assert data.images.shape == (3, 4, 5) and data.masks.dtype == bool and data.masks[1].all()
    with pytest.raises(DataError, match="sizes differ"):
        samples_of([(4, 5), (5, 5)]).to_array_dataset("binary")
    multi = samples_of([(4, 5)])
    multi.class_names = ["a", "b", "c"]
    with pytest.raises(DataError, match="not a binary task"):
        multi.to_array_dataset("binary")
    ignored = samples_of([(4, 5)] * 2, values=(0, 255))
    ignored.ignore_index = 255
    kept = ignored.to_array_dataset("binary")  # ignored pixels become valid == False, not foreground
    assert kept.valid is not None and not kept.valid[1].any() and kept.valid[0].all()
    assert not kept.masks.any()
    resized = samples_of([(4, 5), (6, 7)]).to_array_dataset("binary", size=8)
    assert resized.images.shape == (2, 8, 8) and resized.masks[1].all()
    rgb = samples_of([(4, 5)]).to_array_dataset("binary", channels=3)
    assert rgb.images.shape == (1, 4, 5, 3) and rgb.channels == 3
    make_pet(tmp_path)
    with pytest.raises(DataError, match="Abyssinian_34.jpg.*sizes differ"):
        read_oxford_pet(tmp_path, border="pet").to_array_dataset("binary")


def test_check_names_the_mask_file():
    bad = samples_of([(4, 5)], values=(3,))
    with pytest.raises(DataError, match=r"r/masks/s0\.png \(id 's0'\): mask values \[3\] outside classes 0\.\.1"):
        bad.check()
    with pytest.raises(DataError, match="binary_rule='maybe': unknown rule"):
        read_folders(Path("."), binary_rule="maybe")
    shape = samples_of([(4, 5)])
    shape.masks[0] = np.zeros((4, 4), np.uint8)
    with pytest.raises(DataError, match=r"r/masks/s0\.png.*mask size 4x4 differs from its image's 5x4"):
        shape.check()


def test_registry_reads_every_format(tmp_path, tgs_dir, tgs_info):
    assert set(FORMATS) == {"tgs", "folders", "oxford-pet", "camvid", "isbi"}
    tgs = read_dataset("tgs", tgs_dir)
    assert len(tgs) == tgs_info["n"] and tgs.check() is tgs
    assert tgs.to_array_dataset("binary").images.shape == (tgs_info["n"], tgs_info["size"], tgs_info["size"])
    make_camvid(tmp_path / "camvid")
    assert len(read_dataset("camvid", tmp_path / "camvid", split="val")) == 1
    make_isbi(tmp_path / "isbi")
    assert len(read_dataset("ISBI", tmp_path / "isbi")) == 4
    with pytest.raises(DataError, match="unknown data format; choose one of tgs, folders, oxford-pet"):
        read_dataset("voc", tmp_path)
    with pytest.raises(DataError, match="unknown option.*colour.*accepted: split"):
        read_dataset("camvid", tmp_path / "camvid", colour=1)


def test_resolve_format_is_the_one_name_and_option_check():
    from unetlab.errors import ConfigError

    assert resolve_format(" Oxford_Pet ", {"border": "pet"}) == ("oxford-pet", {"border": "pet"})
    assert resolve_format("TGS") == ("tgs", {})
    with pytest.raises(DataError, match=r"format 'voc': unknown data format; choose one of tgs, folders, "):
        resolve_format("voc")
    with pytest.raises(ConfigError, match=r"data.format 'isbi': unknown option\(s\) data.options.fg; accepted: "
                                          r"foreground"):
        resolve_format("isbi", {"fg": 0}, field="data.format", option_prefix="data.options.", error=ConfigError)


def test_layouts_take_their_readers_options():
    import inspect

    from unetlab.data.formats.registry import LAYOUTS

    for name, layout in LAYOUTS.items():  # inspect walks a format with the options its reader was given
        assert inspect.signature(layout).parameters.keys() == inspect.signature(FORMATS[name]).parameters.keys()


# ----------------------------------------------------------------------------- labels.py: binary rules, lossy masks

from unetlab.data.formats.labels import MaskRules, lossy_kind, parse_binary_rule  # noqa: E402


def test_parse_binary_rule_names_and_refusals():
    assert parse_binary_rule("strict").strict and parse_binary_rule("nonzero").threshold == 0
    rule = parse_binary_rule(" Threshold:127 ")
    assert (rule.name, rule.threshold, rule.strict) == ("threshold:127", 127, False)
    for bad in ("maybe", "threshold:", "threshold:-1", "threshold:1.5", None, 3):
        with pytest.raises(DataError, match=r"data.options.binary_rule=.*unknown rule; choose strict .* nonzero "
                                            r".* threshold:T"):
            parse_binary_rule(bad, "data.options.binary_rule")


@pytest.mark.parametrize("values, rule, expected", [
    ([0, 1], "strict", [0, 1]),
    ([0, 255], "strict", [0, 1]),
    ([0, 65535], "strict", [0, 1]),
    ([255, 255], "strict", [1, 1]),
    ([0, 1, 2, 7], "nonzero", [0, 1, 1, 1]),
    ([0, 100, 127, 128, 255], "threshold:127", [0, 0, 0, 1, 1]),
])
def test_binary_rules_map_values(values, rule, expected):
    array = np.array([values], dtype=np.uint16 if max(values) > 255 else np.uint8)
    np.testing.assert_array_equal(MaskRules(parse_binary_rule(rule)).check("m.png", array), [expected])


@pytest.mark.parametrize("values", [[0, 1, 2, 7], [0, 1, 255], [0, 128, 255], [3]])
def test_strict_refuses_other_values_naming_file_values_and_option(values):
    rules = MaskRules(parse_binary_rule("strict"))
    array = np.array([values], dtype=np.uint8)
    message = "{" + ", ".join(map(str, values)) + "}"
    with pytest.raises(DataError, match=re.escape(f"masks/a.png: mask values {message} are not binary") +
                       r".*--set data.options.binary_rule=nonzero.*threshold:T"):
        rules.check("masks/a.png", array)
    assert rules.problem("masks/a.png", array)[0] == "values"


def test_strict_leaves_the_ignore_index_out():
    rules = MaskRules(parse_binary_rule("strict"), ignore_index=128)
    np.testing.assert_array_equal(rules.check("m.png", np.array([[0, 255, 128]], np.uint8)), [[0, 1, 128]])


def test_lossy_kind_by_content_not_name(tmp_path):
    grey = np.zeros((8, 8), np.uint8)
    assert lossy_kind(save(tmp_path / "a.jpg", grey, "JPEG")) == "JPEG"
    assert lossy_kind(save(tmp_path / "b.png", grey, "JPEG")) == "JPEG"  # a JPEG named .png
    assert lossy_kind(save(tmp_path / "c.jpg", grey, "PNG")) is None
    assert lossy_kind(tmp_path / "missing.png") is None  # the reader names a missing file itself
    from PIL import features

    if features.check("webp"):
        assert lossy_kind(save(tmp_path / "d.webp", Image.fromarray(grey), "WEBP")) == "lossy WebP"
        image = Image.fromarray(grey)
        image.save(tmp_path / "e.webp", format="WEBP", lossless=True)
        assert lossy_kind(tmp_path / "e.webp") is None


def _folder_pair(root: Path, mask: np.ndarray, fmt: str = "PNG", name: str = "a.png") -> Path:
    save(root / "images" / "a.png", np.zeros(mask.shape, np.uint8))
    return save(root / "masks" / name, mask, fmt)


def test_folders_refuse_jpeg_masks_unless_allowed(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    path = _folder_pair(tmp_path, mask, "JPEG", "a.jpg")
    with pytest.raises(DataError, match=re.escape(f"{path}: mask stored as JPEG") +
                       r".*--set data.options.allow_lossy_masks=true"):
        read_folders(tmp_path, binary_rule="nonzero")
    samples = read_folders(tmp_path, binary_rule="threshold:127", allow_lossy_masks=True)
    np.testing.assert_array_equal(samples.masks[0], mask > 127)


def test_folders_binary_rules(tmp_path):
    mask = np.array([[0, 1, 2, 7]] * 4, np.uint8)
    path = _folder_pair(tmp_path, mask)
    with pytest.raises(DataError, match=re.escape(f"{path}: mask values {{0, 1, 2, 7}} are not binary")):
        read_folders(tmp_path, binary_rule="strict")
    assert read_folders(tmp_path, binary_rule="nonzero").masks[0].tolist() == [[0, 1, 1, 1]] * 4
    assert read_folders(tmp_path, binary_rule="threshold:1").masks[0].tolist() == [[0, 0, 1, 1]] * 4
    samples = read_folders(tmp_path, num_classes=8)  # no rule: class indices as stored
    assert samples.masks[0].tolist() == mask.tolist()
    with pytest.raises(DataError, match=re.escape(f"{path} (id 'a'): mask values [7] outside classes 0..2")):
        read_folders(tmp_path, num_classes=3)  # multiclass: beyond the classes, naming the file


def test_config_checks_label_option_values():
    from unetlab.config import load_config
    from unetlab.errors import ConfigError

    config = load_config(None, ["data.options.binary_rule=threshold:127", "data.options.allow_lossy_masks=true"])
    assert config.data.options == {"binary_rule": "threshold:127", "allow_lossy_masks": True}
    with pytest.raises(ConfigError, match=r"data.options.binary_rule='maybe': unknown rule"):
        load_config(None, ["data.options.binary_rule=maybe"])
    with pytest.raises(ConfigError, match=r"data.options.allow_lossy_masks='sometimes': expected true or false"):
        load_config(None, ["data.options.allow_lossy_masks=sometimes"])
