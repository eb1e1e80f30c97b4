"""qkernels.train.data: the CIFAR reader on small files in the official pickle format, the data_dir checks,
digits, synthetic, augment_batch; and qkernels.train._deps."""

import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qkernels.train import _deps, data

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
MARK = (1, 5, 20)  # (c, h, w) of the one bright pixel of every "marked" image


def _images(n: int, seed: int) -> np.ndarray:
    """n CIFAR rows (uint8 [n, 3072]); image 0 is black but for 255 at MARK, the others pseudo-random."""
    rows = np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    c, h, w = MARK
    rows[0] = 0
    rows[0, c * 1024 + h * 32 + w] = 255  # the release's layout: R, G, B planes, each row major
    return rows


def _dump(path, entry: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(entry, f)


def _write_cifar10(parent, per_batch: int = 2, test_n: int = 3) -> dict:
    """A CIFAR-10 release folder under `parent` with data_batch_1..5, test_batch, batches.meta; returns what
    each file holds."""
    folder = parent / "cifar-10-batches-py"
    folder.mkdir()
    files = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = test_n if name == "test_batch" else per_batch
        rows, labels = _images(n, seed=i), [(3 * i + j) % 10 for j in range(n)]
        _dump(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                              b"filenames": [b"x.png"] * n})
        files[name] = (rows, labels)
    _dump(folder / "batches.meta", {b"label_names": [b"class%d" % k for k in range(10)], b"num_vis": 3072})
    return files


def _write_cifar100(parent, train_n: int = 4, test_n: int = 2) -> dict:
    folder = parent / "cifar-100-python"
    folder.mkdir()
    files = {}
    for i, (name, n) in enumerate((("train", train_n), ("test", test_n))):
        rows, fine = _images(n, seed=10 + i), [99 - 7 * j - i for j in range(n)]
        _dump(folder / name, {b"filenames": [b"x.png"] * n, b"batch_label": name.encode(), b"fine_labels": fine,
                              b"coarse_labels": [k // 5 for k in fine], b"data": rows})
        files[name] = (rows, fine)
    _dump(folder / "meta", {b"fine_label_names": [b"f"] * 100, b"coarse_label_names": [b"c"] * 20})
    return files


def _expected(rows: np.ndarray, mean, std) -> torch.Tensor:
    """The formula, pixel by pixel from the flat rows: x[n, c, h, w] = (row[c*1024 + h*32 + w] / 255 - m_c) / s_c."""
    out = torch.empty(len(rows), 3, 32, 32)
    for c in range(3):
        plane = torch.tensor(rows[:, c * 1024:(c + 1) * 1024].astype(np.float32)).view(-1, 32, 32)
        out[:, c] = (plane / 255 - mean[c]) / std[c]
    return out


def test_cifar10_reader(tmp_path):
    files = _write_cifar10(tmp_path)
    ds = data.load("cifar10", str(tmp_path))
    train = [files[f"data_batch_{k}"] for k in range(1, 6)]
    assert ds.train_x.shape == (10, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.train_y.tolist() == sum((labels for _, labels in train), [])  # batches 1..5 in order
    assert ds.test_y.tolist() == files["test_batch"][1]
    assert (ds.num_classes, ds.augment, ds.in_channels, ds.image_size) == (10, True, 3, 32)
    expected_train = _expected(np.concatenate([rows for rows, _ in train]), CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(ds.train_x, expected_train, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ds.test_x, _expected(files["test_batch"][0], CIFAR10_MEAN, CIFAR10_STD),
                               rtol=1e-6, atol=1e-6)
    # image 0 of test_batch: 255 at MARK, 0 elsewhere -> (1 - m_c) / s_c there, -m_c / s_c elsewhere
    marked = ds.test_x[0]
    assert np.unravel_index(int(marked.argmax()), marked.shape) == MARK
    c, h, w = MARK
    assert marked[c, h, w].item() == pytest.approx((1 - CIFAR10_MEAN[c]) / CIFAR10_STD[c], rel=1e-6)
    for ch in range(3):
        assert marked[ch, 0, 0].item() == pytest.approx(-CIFAR10_MEAN[ch] / CIFAR10_STD[ch], rel=1e-6)


def test_cifar100_reader_and_release_folder_given_directly(tmp_path):
    files = _write_cifar100(tmp_path)
    folder = tmp_path / "cifar-100-python"
    assert data.data_dir_problem("cifar100", str(folder)) is None
    ds = data.load("cifar100", str(folder))
    assert ds.train_x.shape == (4, 3, 32, 32) and ds.test_x.shape == (2, 3, 32, 32)
    assert ds.train_y.tolist() == files["train"][1] and ds.test_y.tolist() == files["test"][1]
    assert (ds.num_classes, ds.augment) == (100, True)
    torch.testing.assert_close(ds.train_x, _expected(files["train"][0], CIFAR100_MEAN, CIFAR100_STD),
                               rtol=1e-6, atol=1e-6)
    c, h, w = MARK
    assert ds.test_x[0, c, h, w].item() == pytest.approx((1 - CIFAR100_MEAN[c]) / CIFAR100_STD[c], rel=1e-6)
    from_parent = data.load("cifar100", str(tmp_path))
    assert torch.equal(from_parent.train_x, ds.train_x) and torch.equal(from_parent.test_y, ds.test_y)


def test_data_dir_problems(tmp_path):
    missing = tmp_path / "nowhere"
    assert data.data_dir_problem("cifar10", str(missing)) == f"{str(missing)!r} does not exist"
    empty = tmp_path / "empty"
    empty.mkdir()
    problem = data.data_dir_problem("cifar10", str(empty))
    assert "holds no cifar-10-batches-py" in problem and "CIFAR-10" in problem and str(empty) in problem
    assert "holds no cifar-100-python" in data.data_dir_problem("cifar100", str(empty))
    assert data.data_dir_problem("cifar10", None) is not None
    _write_cifar10(tmp_path)
    assert data.data_dir_problem("cifar10", str(tmp_path)) is None
    assert data.data_dir_problem("cifar10", str(tmp_path / "cifar-10-batches-py")) is None
    assert "holds no cifar-100-python" in data.data_dir_problem("cifar100", str(tmp_path))
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    for given in (tmp_path, tmp_path / "cifar-10-batches-py"):
        problem = data.data_dir_problem("cifar10", str(given))
        assert problem.endswith("is missing data_batch_3") and "cifar-10-batches-py" in problem
    with pytest.raises(ValueError, match="data_dir.*missing data_batch_3"):
        data.load("cifar10", str(tmp_path))
    for name in ("digits", "synthetic"):
        assert data.data_dir_problem(name, None) is None
        assert data.data_dir_problem(name, str(missing)) is None
    with pytest.raises(ValueError, match="name"):
        data.data_dir_problem("mnist", None)


@pytest.mark.parametrize("content", [b"not a pickle", pickle.dumps([1, 2]), pickle.dumps({b"data": 0}),
                                     pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}),
                                     pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
                                     pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]})])
def test_malformed_cifar_file_is_named(tmp_path, content):
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(content)
    with pytest.raises(ValueError, match="test_batch"):
        data.load("cifar10", str(tmp_path))


def test_digits():
    torch.manual_seed(1)
    np.random.seed(1)
    ds = data.load("digits", "/ignored")
    torch.manual_seed(2)
    np.random.seed(2)
    again = data.load("digits")
    assert torch.equal(ds.train_x, again.train_x) and torch.equal(ds.test_y, again.test_y)  # no global RNG
    n_test = math.ceil(0.2 * 1797)  # train_test_split rounds the test share up
    assert ds.train_x.shape == (1797 - n_test, 1, 8, 8) and ds.test_x.shape == (n_test, 1, 8, 8)
    assert (ds.num_classes, ds.augment, ds.in_channels, ds.image_size) == (10, False, 1, 8)
    assert ds.train_y.dtype == torch.int64 and ds.train_x.dtype == torch.float32
    train_counts, test_counts = torch.bincount(ds.train_y), torch.bincount(ds.test_y)
    assert len(train_counts) == len(test_counts) == 10 and int(ds.train_y.min()) == 0
    # stratified: each class's test share is 20% of that class, up to rounding
    assert ((test_counts - 0.2 * (train_counts + test_counts)).abs() <= 1).all()
    # standardized with the training split's scalar mean and std, the same map applied to the test split:
    # blank pixels (0) exist in both and land on the same value
    assert ds.train_x.mean().item() == pytest.approx(0, abs=1e-5)
    assert ds.train_x.std().item() == pytest.approx(1, abs=1e-5)
    assert ds.test_x.min().item() == ds.train_x.min().item()
    assert len(torch.unique(ds.train_x)) == 17  # pixel values 0..16


def test_synthetic():
    rng = torch.get_rng_state()
    torch.manual_seed(1)
    ds = data.load("synthetic")
    torch.manual_seed(2)
    again = data.load("synthetic")
    assert torch.equal(ds.train_x, again.train_x) and torch.equal(ds.test_x, again.test_x)
    assert torch.equal(ds.train_y, again.train_y) and torch.equal(ds.test_y, again.test_y)
    torch.set_rng_state(rng)
    assert ds.train_x.shape == (2048, 3, 32, 32) and ds.test_x.shape == (512, 3, 32, 32)
    assert ds.train_y.shape == (2048,) and ds.test_y.shape == (512,) and ds.train_y.dtype == torch.int64
    assert (ds.num_classes, ds.augment, ds.in_channels, ds.image_size) == (10, False, 3, 32)
    assert len(torch.bincount(ds.train_y)) == 10 and torch.bincount(ds.train_y).min() > 100
    assert torch.isfinite(ds.train_x).all() and ds.train_x.std().item() == pytest.approx(1, abs=1e-3)


def test_synthetic_leaves_global_rng_alone():
    torch.manual_seed(3)
    before = torch.get_rng_state()
    data.load("synthetic")
    assert torch.equal(torch.get_rng_state(), before)


def _find_transform(img: torch.Tensor, out: torch.Tensor) -> list:
    """Every (oy, ox, flip) whose explicit construction from `img` gives `out`: pad 4 zero pixels, crop the
    HxW window at (oy, ox), mirror left-right when flip."""
    h, w = img.shape[1:]
    padded = F.pad(img, (4, 4, 4, 4))
    found = []
    for oy in range(9):
        for ox in range(9):
            crop = padded[:, oy:oy + h, ox:ox + w]
            for flip in (False, True):
                if torch.equal(crop.flip(-1) if flip else crop, out):
                    found.append((oy, ox, flip))
    return found


def test_augment_batch_is_a_shift_and_or_flip_of_each_image():
    x = torch.randn(200, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # distinct values: one match
    before = x.clone()
    out = data.augment_batch(x, torch.Generator().manual_seed(5))
    assert out.shape == x.shape and out.dtype == x.dtype and out.data_ptr() != x.data_ptr()
    assert torch.equal(x, before)
    transforms = [_find_transform(x[i], out[i]) for i in range(len(x))]
    assert all(len(t) == 1 for t in transforms)
    oys, oxs, flips = zip(*(t[0] for t in transforms))
    # uniform draws over 200 images: every offset and both flips occur
    assert set(oys) == set(oxs) == set(range(9)) and set(flips) == {False, True}
    assert 0.3 < sum(flips) / len(flips) < 0.7


def test_augment_batch_cifar_shape_and_determinism():
    x = torch.randn(16, 3, 32, 32)
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    a = data.augment_batch(x, g)
    b = data.augment_batch(x, g)  # the generator moved on: another draw
    g.set_state(state)
    assert torch.equal(data.augment_batch(x, g), a)
    assert a.shape == x.shape and not torch.equal(a, b)
    for i in (0, 15):
        assert len(_find_transform(x[i], a[i])) == 1


def test_augment_batch_bad_input():
    g = torch.Generator()
    with pytest.raises(ValueError, match="x"):
        data.augment_batch(torch.zeros(3, 32, 32), g)
    with pytest.raises(ValueError, match="x"):
        data.augment_batch(torch.zeros(2, 3, 32, 16), g)
    with pytest.raises(TypeError, match="generator"):
        data.augment_batch(torch.zeros(2, 3, 32, 32), 0)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="name.*mnist"):
        data.load("mnist")


def test_require(monkeypatch):
    assert _deps.require("sklearn.datasets").__name__ == "sklearn.datasets"
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `import tqdm` fail as if not installed
    with pytest.raises(ImportError, match=r"qkernels.train needs tqdm \(.+\): pip install 'qkernels\[train\]'"):
        _deps.require("tqdm")
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="needs matplotlib"):
        _deps.require("matplotlib.pyplot")
    with pytest.raises(ValueError, match="module"):
        _deps.require("requests")


def test_optional_dependencies_are_not_imported_with_the_modules():
    # torch itself may import tqdm: only what importing our modules adds counts
    code = ("import sys, qkernels; optional = ('sklearn', 'tqdm', 'matplotlib'); "
            "before = {m for m in optional if m in sys.modules}; "
            "import qkernels.train.data, qkernels.train.models; "
            "print(sorted(m for m in optional if m in sys.modules and m not in before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "[]"
