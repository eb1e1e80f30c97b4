"""Data sets of the training harness: digits (scikit-learn), CIFAR-10/100 (python-pickle release on disk) and a
synthetic CIFAR-shaped set; plus the usual CIFAR training augmentation.

Every set is held whole in memory as float32 images ``[N, C, H, W]`` (already normalized) and int64 labels
``[N]``. CIFAR is read with ``pickle``, which can run code from the file: point ``data_dir`` only at files you
trust (the official release).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import torch
from torch import Tensor

from qkernels.train._deps import require

DATASETS = ("digits", "cifar10", "cifar100", "synthetic")
CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}

# Per-channel mean and std of the training images scaled to [0, 1] (the constants everyone uses).
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_CIFAR_FILES = {  # (training files, test file) inside the release folder
    "cifar10": (tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
    "cifar100": (("train",), "test"),
}
_CIFAR_LABEL_KEYS = {"cifar10": b"labels", "cifar100": b"fine_labels"}
_CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
_CIFAR_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
_CIFAR_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
_CIFAR_SIDE = 32

_SYNTHETIC_SEED = 20240519
_SYNTHETIC_SIZES = (2048, 512)  # train, test
_SYNTHETIC_CLASSES = 10


@dataclass
class Dataset:
    """A whole data set in memory.

    ``train_x`` float32 ``[N, C, H, W]`` and ``test_x`` float32 ``[M, C, H, W]``, both normalized with
    statistics of the training split (or fixed constants for CIFAR); ``train_y`` int64 ``[N]`` and ``test_y``
    int64 ``[M]`` with values in ``[0, num_classes)``. ``augment``: training batches are meant to go through
    :func:`augment_batch` (CIFAR). Images are square (H == W).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    augment: bool

    @property
    def in_channels(self) -> int:
        """C of the images."""
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        """H (== W) of the images."""
        return self.train_x.shape[2]


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"name: unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


def _cifar_release(name: str, data_dir: str | None) -> tuple[str | None, str | None]:
    """(release folder, None) when every file `load` reads is there, else (None, problem)."""
    title, release = _CIFAR_TITLES[name], CIFAR_DIRS[name]
    if data_dir is None:
        return None, f"not given; {name} needs the folder holding {release} (the python-pickle release of {title})"
    if not os.path.exists(data_dir):
        return None, f"{data_dir!r} does not exist"
    if not os.path.isdir(data_dir):
        return None, f"{data_dir!r} is not a directory"
    train_files, test_file = _CIFAR_FILES[name]
    needed = train_files + (test_file,)
    nested = os.path.join(data_dir, release)
    if os.path.isdir(nested):
        folder = nested
    elif (os.path.basename(os.path.normpath(data_dir)) == release
          or any(os.path.isfile(os.path.join(data_dir, f)) for f in needed)):
        folder = data_dir  # the release folder itself
    else:
        problem = f"{data_dir!r} holds no {release} (the python-pickle release of {title})"
        if os.path.isfile(os.path.join(data_dir, _CIFAR_ARCHIVES[name])):
            problem += f"; extract {_CIFAR_ARCHIVES[name]} there first"
        return None, problem
    missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        return None, f"{folder!r} is missing {', '.join(missing)}"
    return folder, None


def data_dir_problem(name: str, data_dir: str | None) -> str | None:
    """None when data set `name` can be loaded with `data_dir`; otherwise what is wrong, worded to follow
    "--data-dir: " (e.g. "'/x' does not exist", "'/x' holds no cifar-10-batches-py (the python-pickle release
    of CIFAR-10)", "'/x/cifar-10-batches-py' is missing data_batch_3").

    digits and synthetic need no data_dir (a given one is ignored). For cifar10/cifar100, `data_dir` is either
    the parent of the release folder (``CIFAR_DIRS[name]``) or that folder itself. Only the presence of the
    files is checked here; :func:`load` reports a malformed file. Unknown `name` -> ValueError.
    """
    _check_name(name)
    if name not in CIFAR_DIRS:
        return None
    return _cifar_release(name, data_dir)[1]


def _read_cifar_file(path: str, label_key: bytes, num_classes: int) -> tuple[Tensor, Tensor]:
    """One pickled CIFAR batch -> (uint8 [N, 3, 32, 32], int64 [N]). ``b"data"`` is uint8 [N, 3072]: the red,
    green and blue 32x32 planes one after the other, each row major, so a reshape to [N, 3, 32, 32] puts
    byte ``c * 1024 + h * 32 + w`` at (c, h, w)."""
    import numpy as np  # torch runs without numpy (scikit-learn brings it); only the CIFAR reader needs it

    def bad(why: str) -> ValueError:
        return ValueError(f"{path}: not a CIFAR python-pickle batch ({why})")

    with open(path, "rb") as f:
        try:
            entry = pickle.load(f, encoding="bytes")
        except Exception as e:  # a broken pickle raises any of several types (UnpicklingError, EOFError, ...)
            raise bad(f"{type(e).__name__}: {e}") from e
    if not isinstance(entry, dict):
        raise bad(f"holds a {type(entry).__name__}, not a dict")
    for key in (b"data", label_key):
        if key not in entry:
            raise bad(f"no {key!r} entry")
    data = np.asarray(entry[b"data"])
    side = _CIFAR_SIDE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * side * side:
        raise bad(f"{b'data'!r} is {data.dtype} {list(data.shape)}, expected uint8 [N, {3 * side * side}]")
    try:
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise bad(f"{label_key!r} are not integers") from e
    if labels.shape != (data.shape[0],):
        raise bad(f"{label_key!r} has shape {list(labels.shape)}, expected [{data.shape[0]}]")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise bad(f"{label_key!r} outside [0, {num_classes})")
    x = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, 3, side, side)
    return x, torch.from_numpy(labels)


def _load_cifar(name: str, data_dir: str | None) -> Dataset:
    folder, problem = _cifar_release(name, data_dir)
    if problem is not None:
        raise ValueError(f"data_dir: {problem}")
    train_files, test_file = _CIFAR_FILES[name]
    label_key, num_classes = _CIFAR_LABEL_KEYS[name], _CIFAR_CLASSES[name]
    parts = [_read_cifar_file(os.path.join(folder, f), label_key, num_classes) for f in train_files]
    test_x, test_y = _read_cifar_file(os.path.join(folder, test_file), label_key, num_classes)
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in _CIFAR_STATS[name])

    def normalize(x: Tensor) -> Tensor:  # x_c = (byte / 255 - mean_c) / std_c
        return (x.float() / 255 - mean) / std

    return Dataset(name, normalize(torch.cat([p[0] for p in parts])), torch.cat([p[1] for p in parts]),
                   normalize(test_x), test_y, num_classes, augment=True)


def _load_digits() -> Dataset:
    datasets = require("sklearn.datasets")
    model_selection = require("sklearn.model_selection")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # pixels are 0..16
    y = torch.tensor(digits.target, dtype=torch.int64)
    # a fixed seed of its own: the split never depends on (or moves) the global RNG
    idx_train, idx_test = model_selection.train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.2, random_state=0, stratify=y.numpy())
    idx_train, idx_test = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    train_x, test_x = x[idx_train], x[idx_test]
    mean, std = train_x.mean(), train_x.std()  # one scalar each: x' = (x - mean) / std
    return Dataset("digits", (train_x - mean) / std, y[idx_train], (test_x - mean) / std, y[idx_test],
                   num_classes=10, augment=False)


def _load_synthetic() -> Dataset:
    """3x32x32, 10 classes, 2048 train / 512 test, from a generator of its own (fixed seed). Each class has a
    random 3x7x7 motif M_c (Gaussian pixels); an image of class y holds two copies of M_y and one of a random
    class's motif (possibly y again), each added at a uniformly random position, over smooth noise S
    (a 3x8x8 Gaussian draw bilinearly upsampled to 32x32) and white noise E ~ N(0, 1):

        x = 1.0 * S + 0.5 * E + M_y @ p1 + M_y @ p2 + M_z @ p3      (M @ p: M added with its top left at p),

    then normalized per channel with the training split's mean and std. The class does not depend on where the
    motifs are, so a linear model on the pixels stays near chance (logistic regression: 12% test accuracy),
    while the harness's cnn reaches ~93% in 5 epochs (Adam, lr 1e-3, batch 64)."""
    g = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    side, motif, classes = 32, 7, _SYNTHETIC_CLASSES
    span = side - motif  # a motif's top-left corner lies in [0, span] each way
    motifs = torch.randn(classes, 3, motif, motif, generator=g)
    # A motif at (span, span) of a (side + span)^2 zero canvas: the side x side window at offset o in [0, span]
    # shows it at position span - o, so placing every image's copy is one window gather.
    canvas = torch.zeros(classes, 3, side + span, side + span)
    canvas[:, :, span:span + motif, span:span + motif] = motifs
    n = sum(_SYNTHETIC_SIZES)
    y = torch.randint(0, classes, (n,), generator=g)
    low = torch.randn(n, 3, side // 4, side // 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear", align_corners=False)
    x = x + 0.5 * torch.randn(n, 3, side, side, generator=g)
    distractor = torch.randint(0, classes, (n,), generator=g)
    no_flip = torch.zeros(n, dtype=torch.bool)
    for which in (y, y, distractor):
        oy, ox = (torch.randint(0, span + 1, (n,), generator=g) for _ in range(2))
        x = x + _windows(canvas, which, oy, ox, side, no_flip)
    n_train = _SYNTHETIC_SIZES[0]
    mean = x[:n_train].mean(dim=(0, 2, 3), keepdim=True)
    std = x[:n_train].std(dim=(0, 2, 3), keepdim=True)
    x = (x - mean) / std
    return Dataset("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes, augment=False)


def _windows(src: Tensor, which: Tensor, oy: Tensor, ox: Tensor, side: int, flip: Tensor) -> Tensor:
    """out[i] = src[which[i], :, oy[i]:oy[i]+side, ox[i]:ox[i]+side], mirrored left-right where flip[i].
    src [S, C, H', W'], the others [B] -> [B, C, side, side], one gather for the whole batch."""
    r = torch.arange(side, device=src.device)
    rows = oy[:, None] + r  # [B, side]
    cols = torch.where(flip[:, None], side - 1 - r, r) + ox[:, None]  # [B, side]
    # advanced indices around the channel slice put their broadcast dims [B, side, side] first, C last
    out = src[which[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def augment_batch(x: Tensor, generator: torch.Generator) -> Tensor:
    """The usual CIFAR training augmentation, independently per image: pad by 4 zero pixels on every side,
    crop a random HxW window (offsets 0..8 each way, uniform), and mirror it left-right with probability 1/2.

        out[b, c, i, j] = pad(x)[b, c, oy_b + i, ox_b + (W - 1 - j if flip_b else j)]

    x [B, C, H, W] -> new tensor, same shape, dtype and device. All draws (oy, ox, flip per image) come from
    `generator` (on its own device, then moved to x's), so equal generator states give equal batches."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x: expected a [B, C, H, W] tensor, got {_describe(x)}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    pad = 4
    b, _, h, w = x.shape
    if h != w:
        raise ValueError(f"x: images must be square, got {h}x{w}")
    dev = generator.device
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev).to(x.device)
    flip = (torch.rand(b, generator=generator, device=dev) < 0.5).to(x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    return _windows(padded, torch.arange(b, device=x.device), oy, ox, h, flip)


def _describe(x) -> str:
    return f"shape {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def load(name: str, data_dir: str | None = None) -> Dataset:
    """Data set `name` (one of DATASETS) in memory; see the module docstring and each loader for what it holds.

    digits: scikit-learn's ``load_digits()`` (1797 8x8 images, 1 channel, no download), pixel / 16, then
    ``(x - mean) / std`` with the training split's scalar mean and std; a fixed stratified 80/20 split
    (``train_test_split(random_state=0, stratify=y)``: 1437 train / 360 test). cifar10 / cifar100: the
    python-pickle release under `data_dir` (see :func:`data_dir_problem`), x / 255 then per-channel
    ``(x - mean_c) / std_c`` with the usual constants, augment=True; a missing release or file raises
    ValueError naming data_dir, a malformed file ValueError naming the file. synthetic: see ``_load_synthetic``,
    2048 train / 512 test, deterministic. Unknown `name` -> ValueError.
    """
    _check_name(name)
    if name in CIFAR_DIRS:
        return _load_cifar(name, data_dir)
    if name == "digits":
        return _load_digits()
    return _load_synthetic()
