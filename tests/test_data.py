"""Tests of the dataset registry on tiny files written in the real on-disk formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import time

import numpy as np
import pytest
import torch
from PIL import Image

from maxup.data import (
    DatasetInfo,
    TensorImageDataset,
    build_dataset,
    dataset_info,
    list_datasets,
    register_dataset,
)
from maxup.errors import ConfigError, DataError

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"

# ----------------------------------------------------------------------------- registry


def test_list_and_info():
    assert {"cifar10", "cifar100", "imagenet", "fashion_mnist", "digits", "synthetic"} <= set(
        list_datasets()
    )
    info = dataset_info("cifar100")
    assert isinstance(info, DatasetInfo)
    assert (info.num_classes, info.in_channels, info.image_size) == (100, 3, (32, 32))
    assert len(info.mean) == len(info.std) == 3
    assert dataset_info("fashion_mnist").default_root == FASHION_ROOT


def test_unknown_dataset():
    with pytest.raises(ConfigError) as e:
        dataset_info("mnist9")
    assert e.value.field == "data.name" and "cifar10" in str(e.value)
    with pytest.raises(ConfigError):
        build_dataset("mnist9", split="train")


@pytest.mark.parametrize("kw,field", [
    ({"split": "val"}, "data.split"),
    ({"split": "train", "train_transform": "fancy"}, "data.train_transform"),
    ({"split": "train", "subset": 0}, "data.subset"),
    ({"split": "train", "subset": 10_000}, "data.subset"),
])  # fmt: skip
def test_bad_arguments(kw, field):
    with pytest.raises(ConfigError) as e:
        build_dataset("digits", **kw)
    assert e.value.field == field


def test_register_dataset(monkeypatch):
    from maxup.data import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # undone after the test
    info = DatasetInfo(2, 1, (2, 2), (0.5,), (0.5,), None, 4, 4)

    @register_dataset("test_tiny", info)
    def _tiny(*, split, root, train_transform, download):
        return TensorImageDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]))

    assert dataset_info("test_tiny") is info
    assert len(build_dataset("test_tiny", split="test")) == 4
    with pytest.raises(ValueError):
        register_dataset("test_tiny", info)(lambda **kw: None)


# ----------------------------------------------------------------------------- digits


def test_digits_split_sizes_and_determinism():
    tr = build_dataset("digits", split="train")
    te = build_dataset("digits", split="test")
    # sklearn: test = ceil(0.3 * 1797) = 540, train = 1257
    assert (len(tr), len(te)) == (1257, 540)
    assert tr.images.shape == (1257, 1, 8, 8) and tr.images.dtype == torch.float32
    assert tr.labels.dtype == torch.long
    assert 0.0 <= tr.images.min() and tr.images.max() <= 1.0
    assert tr.images.max() == 1.0  # 16 / 16
    again = build_dataset("digits", split="train")
    assert torch.equal(again.images, tr.images) and torch.equal(again.labels, tr.labels)
    # stratified: every class is present in both splits
    assert set(te.labels.tolist()) == set(range(10))
    x, y = tr[5]
    assert torch.equal(x, tr.images[5]) and isinstance(y, int)


def test_digits_pixels_match_sklearn():
    from sklearn.datasets import load_digits

    d = load_digits()
    tr = build_dataset("digits", split="train")
    te = build_dataset("digits", split="test")
    flat = torch.cat([tr.images, te.images]).reshape(-1, 64) * 16
    # the union of both splits is exactly the sklearn data (as a multiset of rows)
    ref = torch.as_tensor(d.data, dtype=torch.float32)
    key = lambda t: sorted(map(tuple, t.round().int().tolist()))  # noqa: E731
    assert key(flat) == key(ref)


def test_regression_digits_split_is_sklearns_train_test_split():
    """The stored split and the CSV read without scikit-learn give exactly what
    ``load_digits`` + ``train_test_split(test_size=0.3, random_state=0, stratify=y)`` give,
    row for row and in order (reading it without importing scikit-learn saves ~2 s of CPU in
    every trial process)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(d.data, d.target, test_size=0.3, random_state=0,
                                              stratify=d.target)
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        ds = build_dataset("digits", split=split)
        want = torch.as_tensor(x, dtype=torch.float32).div(16.0).reshape(-1, 1, 8, 8)
        assert torch.equal(ds.images, want), split
        assert torch.equal(ds.labels, torch.as_tensor(y, dtype=torch.long)), split


def test_subset_fixed_by_seed():
    a = build_dataset("digits", split="train", subset=100, seed=1)
    b = build_dataset("digits", split="train", subset=100, seed=1)
    c = build_dataset("digits", split="train", subset=100, seed=2)
    full = build_dataset("digits", split="train")
    assert len(a) == 100
    assert torch.equal(a.indices, b.indices)
    assert not torch.equal(a.indices, c.indices)
    assert len(set(a.indices.tolist())) == 100
    assert torch.equal(a.images, full.images[a.indices])
    assert torch.equal(a.labels, full.labels[a.indices])


def test_subset_ignored_for_test_split():
    assert len(build_dataset("digits", split="test", subset=10)) == 540


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_described():
    info = dataset_info("synthetic")
    tr = build_dataset("synthetic", split="train")
    te = build_dataset("synthetic", split="test")
    assert (len(tr), len(te)) == (info.train_size, info.test_size) == (1024, 512)
    assert tr.images.shape == (1024, 3, 16, 16)
    assert 0.0 <= tr.images.min() and tr.images.max() <= 1.0
    assert torch.equal(tr.images, build_dataset("synthetic", split="train").images)
    assert not torch.equal(tr.images[:512], te.images)
    assert torch.bincount(tr.labels, minlength=10).tolist() == [103] * 4 + [102] * 6
    mean = tr.images.mean(dim=(0, 2, 3))
    std = tr.images.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(info.mean), atol=2e-3)
    assert torch.allclose(std, torch.tensor(info.std), atol=2e-3)


def test_synthetic_is_learnable_by_nearest_class_mean():
    tr = build_dataset("synthetic", split="train")
    te = build_dataset("synthetic", split="test")
    centroids = torch.stack([tr.images[tr.labels == k].mean(0) for k in range(10)])
    d = torch.cdist(te.images.flatten(1), centroids.flatten(1))
    acc = (d.argmin(1) == te.labels).float().mean().item()
    assert acc > 0.9


# ----------------------------------------------------------------------------- CIFAR


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def cifar10_root(tmp_path):
    """A CIFAR-10 tree with 5 train batches of 4 images and a test batch of 3."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    written = {"train": ([], []), "test": ([], [])}
    for name, n, split in [(f"data_batch_{i}", 4, "train") for i in range(1, 6)] + [
        ("test_batch", 3, "test")
    ]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        _write_pickle(folder / name, {b"batch_label": b"x", b"data": data, b"labels": labels})
        written[split][0].append(data)
        written[split][1].extend(labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]  # fmt: skip
    _write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return tmp_path, {k: (np.concatenate(v[0]), v[1]) for k, v in written.items()}


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_decodes_written_pixels(cifar10_root, split):
    root, written = cifar10_root
    data, labels = written[split]
    ds = build_dataset("cifar10", split=split, root=str(root), train_transform="none")
    assert len(ds) == len(labels)
    assert ds.classes[0] == "airplane" and len(ds.classes) == 10
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
        # CIFAR rows are 1024 R values, then G, then B, each row-major 32x32
        expected = torch.from_numpy(data[i].reshape(3, 32, 32).astype(np.float32) / 255.0)
        assert torch.allclose(x, expected, atol=1e-6)
        assert y == labels[i]


def test_cifar10_standard_train_transform(cifar10_root):
    root, written = cifar10_root
    ds = build_dataset("cifar10", split="train", root=str(root))
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and 0.0 <= x.min() and x.max() <= 1.0
    assert y == written["train"][1][0]
    names = [type(t).__name__ for t in ds.transform.transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "ToTensor"]
    assert ds.transform.transforms[0].padding == 4


def test_cifar10_str_keys_also_load(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = np.full((2, 3072), 7, dtype=np.uint8)
        _write_pickle(folder / name, {"data": data, "labels": [1, 2]})
    _write_pickle(folder / "batches.meta", {"label_names": [str(i) for i in range(10)]})
    ds = build_dataset("cifar10", split="test", root=str(tmp_path))
    x, y = ds[1]
    assert y == 2 and torch.allclose(x, torch.full((3, 32, 32), 7 / 255.0))


def test_cifar10_subset_is_a_fixed_subset(cifar10_root):
    root, written = cifar10_root
    a = build_dataset("cifar10", split="train", root=str(root), train_transform="none",
                      subset=5, seed=0)  # fmt: skip
    b = build_dataset("cifar10", split="train", root=str(root), train_transform="none",
                      subset=5, seed=0)  # fmt: skip
    assert len(a) == 5 and list(a.indices) == list(b.indices)
    for j, i in enumerate(a.indices):
        assert a[j][1] == written["train"][1][i]


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    written = {}
    for name, n in [("train", 6), ("test", 2)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, size=n).tolist()
        coarse = [f // 5 for f in fine]
        _write_pickle(
            folder / name, {b"data": data, b"fine_labels": fine, b"coarse_labels": coarse}
        )
        written[name] = (data, fine)
    _write_pickle(
        folder / "meta",
        {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
         b"coarse_label_names": [f"s{i}".encode() for i in range(20)]},
    )  # fmt: skip
    for split in ("train", "test"):
        ds = build_dataset("cifar100", split=split, root=str(tmp_path), train_transform="none")
        data, fine = written[split]
        assert [ds[i][1] for i in range(len(ds))] == fine
        x0 = torch.from_numpy(data[0].reshape(3, 32, 32).astype(np.float32) / 255.0)
        assert torch.allclose(ds[0][0], x0)
    assert ds.classes[99] == "c99"


def test_cifar_missing_root_names_path(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as e:
        build_dataset("cifar10", split="train", root=str(root))
    msg = str(e.value)
    assert os.path.join(str(root), "cifar-10-batches-py") in msg
    assert "\n" not in msg and "data.download=true" in msg and "data_batch_1" in msg


def test_cifar_root_not_set():
    with pytest.raises(DataError) as e:
        build_dataset("cifar100", split="test")
    assert "data.root" in str(e.value)


def test_cifar_missing_batch_names_file(cifar10_root):
    root, _ = cifar10_root
    missing = root / "cifar-10-batches-py" / "data_batch_3"
    missing.unlink()
    with pytest.raises(DataError) as e:
        build_dataset("cifar10", split="train", root=str(root))
    assert str(missing) in str(e.value)
    # the test split does not need it
    assert len(build_dataset("cifar10", split="test", root=str(root))) == 3


@pytest.mark.parametrize("content", [
    b"garbage",
    pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}),
    pickle.dumps({b"pixels": np.zeros((2, 3072), np.uint8)}),
])  # fmt: skip
def test_cifar_malformed_batch(cifar10_root, content):
    root, _ = cifar10_root
    bad = root / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(content)
    with pytest.raises(DataError) as e:
        build_dataset("cifar10", split="test", root=str(root))
    assert str(bad) in str(e.value)


def test_cifar_never_downloads_unless_asked(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def fake_download(url, download_root, filename=None, md5=None, **kw):
        raise OSError("network unreachable")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fake_download)
    with pytest.raises(DataError) as e:  # download=False: plain "not found", no attempt
        build_dataset("cifar10", split="train", root=str(tmp_path))
    assert "not found" in str(e.value)
    with pytest.raises(DataError) as e:
        build_dataset("cifar10", split="train", root=str(tmp_path), download=True)
    assert "downloading" in str(e.value) and "network unreachable" in str(e.value)


def test_cifar_download_true_skips_when_present(cifar10_root, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def fail(*a, **k):
        raise AssertionError("download attempted although the files are present")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fail)
    root, _ = cifar10_root
    assert len(build_dataset("cifar10", split="test", root=str(root), download=True)) == 3


# ----------------------------------------------------------------------------- ImageNet


COLORS = {"ant": (255, 0, 0), "bee": (0, 128, 255)}


@pytest.fixture
def imagenet_root(tmp_path):
    for sub, n in (("train", 3), ("val", 2)):
        for cls, color in COLORS.items():
            d = tmp_path / sub / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (6 + i, 5), color).save(d / f"{cls}_{i}.png")
    return tmp_path


def test_imagenet_val_pixels_and_labels(imagenet_root):
    ds = build_dataset("imagenet", split="test", root=str(imagenet_root))
    assert len(ds) == 4 and ds.classes == ["ant", "bee"]
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32
        color = COLORS[ds.classes[y]]
        expected = torch.tensor(color, dtype=torch.float32).view(3, 1, 1) / 255.0
        assert torch.allclose(x, expected.expand(3, 224, 224), atol=1e-6)
    assert [y for _, y in ds.samples] == [0, 0, 1, 1]


def test_imagenet_train_pipelines(imagenet_root):
    ds = build_dataset("imagenet", split="train", root=str(imagenet_root))
    names = [type(t).__name__ for t in ds.transform.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor"]
    x, y = ds[0]
    assert x.shape == (3, 224, 224) and y == 0
    plain = build_dataset("imagenet", split="train", root=str(imagenet_root),
                          train_transform="none")  # fmt: skip
    names = [type(t).__name__ for t in plain.transform.transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor"] and len(plain) == 6


def test_imagenet_missing_and_download_refused(tmp_path):
    with pytest.raises(DataError) as e:
        build_dataset("imagenet", split="test", root=str(tmp_path))
    assert os.path.join(str(tmp_path), "val") in str(e.value)
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError) as e:
        build_dataset("imagenet", split="test", root=str(tmp_path))
    assert "no usable images" in str(e.value)
    with pytest.raises(DataError):
        build_dataset("imagenet", split="test", root=str(tmp_path), download=True)


# ----------------------------------------------------------------------------- IDX


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_gz(path, payload: bytes):
    with gzip.open(path, "wb") as f:
        f.write(payload)


@pytest.fixture
def fashion_root(tmp_path):
    rng = np.random.default_rng(2)
    written = {}
    for prefix, split, n in (("train", "train", 5), ("t10k", "test", 3)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write_gz(tmp_path / f"{prefix}-images-idx3-ubyte.gz", _idx_bytes(images, 2051))
        _write_gz(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", _idx_bytes(labels, 2049))
        written[split] = (images, labels)
    return tmp_path, written


@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_idx_decodes_written_values(fashion_root, split):
    root, written = fashion_root
    images, labels = written[split]
    ds = build_dataset("fashion_mnist", split=split, root=str(root))
    assert len(ds) == len(labels)
    assert ds.images.shape == (len(labels), 1, 28, 28) and ds.images.dtype == torch.float32
    assert torch.equal((ds.images[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(images))
    assert ds.labels.tolist() == labels.tolist()
    x, y = ds[1]
    assert torch.equal(x, ds.images[1]) and y == int(labels[1])


def test_fashion_wrong_magic(fashion_root):
    root, written = fashion_root
    bad = root / "t10k-labels-idx1-ubyte.gz"
    _write_gz(bad, _idx_bytes(written["test"][1], 2051))
    with pytest.raises(DataError) as e:
        build_dataset("fashion_mnist", split="test", root=str(root))
    assert str(bad) in str(e.value) and "2049" in str(e.value)


def test_fashion_truncated_idx(fashion_root):
    root, written = fashion_root
    bad = root / "t10k-images-idx3-ubyte.gz"
    _write_gz(bad, _idx_bytes(written["test"][0], 2051)[:-100])  # header says 3 images
    with pytest.raises(DataError) as e:
        build_dataset("fashion_mnist", split="test", root=str(root))
    assert str(bad) in str(e.value) and "truncated" in str(e.value)


def test_fashion_truncated_gzip_stream(fashion_root):
    root, _ = fashion_root
    bad = root / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(DataError) as e:
        build_dataset("fashion_mnist", split="train", root=str(root))
    assert str(bad) in str(e.value)


def test_fashion_count_mismatch(fashion_root):
    root, written = fashion_root
    _write_gz(root / "t10k-labels-idx1-ubyte.gz", _idx_bytes(written["test"][1][:2], 2049))
    with pytest.raises(DataError):
        build_dataset("fashion_mnist", split="test", root=str(root))


def test_fashion_missing_root(tmp_path):
    root = tmp_path / "fm"
    with pytest.raises(DataError) as e:
        build_dataset("fashion_mnist", split="train", root=str(root))
    msg = str(e.value)
    assert str(root / "train-images-idx3-ubyte.gz") in msg
    assert "dataset-fashion-mnist" in msg and "\n" not in msg


@pytest.mark.skipif(not os.path.isdir(FASHION_ROOT), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    t0 = time.perf_counter()
    tr = build_dataset("fashion_mnist", split="train")
    te = build_dataset("fashion_mnist", split="test")
    elapsed = time.perf_counter() - t0
    info = dataset_info("fashion_mnist")
    assert (len(tr), len(te)) == (info.train_size, info.test_size) == (60000, 10000)
    assert tr.images.shape == (60000, 1, 28, 28) and te.images.shape == (10000, 1, 28, 28)
    # Fashion-MNIST is balanced: 6,000 / 1,000 images per class
    assert torch.bincount(tr.labels).tolist() == [6000] * 10
    assert torch.bincount(te.labels).tolist() == [1000] * 10
    assert abs(tr.images.mean().item() - info.mean[0]) < 1e-3
    assert abs(tr.images.std().item() - info.std[0]) < 1e-3
    sub = build_dataset("fashion_mnist", split="train", subset=2000, seed=0)
    assert sub.images.shape == (2000, 1, 28, 28)
    assert elapsed < 30
