"""Real data and a small CNN for demos and model-level tests: scikit-learn's digits.

``load_digits`` ships with scikit-learn (1,797 real 8x8 grey-level images of the digits 0-9,
pixel values 0..16), so nothing is downloaded. A fixed stratified split keeps 1,437 images for
training and 360 for testing.

Example::

    import torch
    from nncompress.demo.digits import DigitsCNN, digits_loaders, evaluate, train_epoch

    train, test = digits_loaders()
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(8):
        train_epoch(model, train, opt)
    print(evaluate(model, test))  # about 0.98
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from nncompress.api.compression import CompressionAlgorithmController

SPLIT_SEED = 0
"""Seed of the stratified train/test split: the split never changes."""

M = TypeVar("M", bound=nn.Module)

TEST_FRACTION = 0.2
"""Share of the images kept for testing (360 of 1,797)."""

DENSE_EPOCHS = 15
"""Epochs :func:`train_dense` trains for by default."""


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits split into train and test tensors.

    Pixels are scaled from 0..16 to [0, 1], then standardised with the mean and standard
    deviation of the training pixels (one scalar each), so test data never leaks into them.

    :return: ``(x_train, y_train, x_test, y_test)``; images of shape (N, 1, 8, 8) float32,
        labels of shape (N,) int64.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # scikit-learn is an optional dependency
        raise ImportError("the digits demo needs scikit-learn: pip install 'nncompress[demo]'") from exc

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=TEST_FRACTION, stratify=labels.numpy(), random_state=SPLIT_SEED
    )
    x_train, x_test = images[idx_train], images[idx_test]
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, labels[idx_train], (x_test - mean) / std, labels[idx_test]


def digits_loaders(batch_size: int = 64, seed: int = 0) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Train and test loaders over the fixed stratified 80/20 split of the digits.

    :param batch_size: batch size of both loaders.
    :param seed: seed of the training loader's shuffling (the split itself is fixed).
    :return: ``(train_loader, test_loader)``; the training loader shuffles, the test loader
        does not. Batches are ``(images, labels)`` with images of shape (B, 1, 8, 8).
    """
    x_train, y_train, x_test, y_test = digits_tensors()
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True, generator=generator)
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=batch_size * 4, shuffle=False)
    return train, test


class ResidualDepthwiseBlock(nn.Module):
    """``x + BN(pointwise(ReLU(BN(depthwise(x)))))``, then ReLU: a MobileNet-style residual block.

    :param channels: input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: (B, C, H, W). :return: (B, C, H, W)."""
        y = F.relu(self.bn1(self.depthwise(x)))
        return F.relu(x + self.bn2(self.pointwise(y)))


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits (about 15k parameters).

    stem conv 3x3 (1 -> 24) + BN + ReLU, a residual depthwise block, a strided conv 3x3
    (24 -> 48, 8x8 -> 4x4) + BN + ReLU, global average pooling, a linear classifier.

    :param num_classes: number of output classes.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.block = ResidualDepthwiseBlock(24)
        self.down = nn.Sequential(
            nn.Conv2d(24, 48, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(48), nn.ReLU()
        )
        self.classifier = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: images (B, 1, 8, 8). :return: logits (B, num_classes)."""
        x = self.block(self.stem(x))  # (B, 24, 8, 8)
        x = self.down(x)  # (B, 48, 4, 4)
        return self.classifier(x.mean(dim=(2, 3)))  # (B, 48) -> (B, 10)


def train_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    ctrl: CompressionAlgorithmController[nn.Module] | None = None,
    progress: str | None = None,
) -> float:
    """Train ``model`` for one epoch with cross-entropy.

    With a compression controller, ``ctrl.scheduler.step()`` is called before each batch and
    ``ctrl.loss()`` is added to the task loss (``ctrl.scheduler.epoch_step()`` is the caller's,
    once before each epoch).

    :param model: the model (set to train mode).
    :param loader: batches of ``(images, labels)``.
    :param optimizer: the optimizer of the model's parameters.
    :param ctrl: the compression controller, if the model is compressed.
    :param progress: when given, show a tqdm bar with this description and the running loss.
    :return: the mean training loss over the epoch's samples.
    """
    model.train()
    total, count = 0.0, 0
    batches = tqdm(loader, desc=progress, leave=True) if progress is not None else None
    for x, y in batches if batches is not None else loader:
        if ctrl is not None:
            ctrl.scheduler.step()
        loss = F.cross_entropy(model(x), y)
        if ctrl is not None:
            loss = loss + ctrl.loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
        if batches is not None:
            batches.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    return total / max(count, 1)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``model`` over ``loader`` in eval mode; the train/eval mode is restored.

    :return: ``(logits (N, classes), labels (N,))``.
    """
    was_training = model.training
    model.eval()
    try:
        outputs = [(model(x), y) for x, y in loader]
    finally:
        model.train(was_training)
    return torch.cat([o for o, _ in outputs]), torch.cat([y for _, y in outputs])


def evaluate(model: nn.Module, loader: DataLoader[Any]) -> float:
    """Top-1 accuracy of ``model`` over ``loader``, in eval mode; the train/eval mode is restored.

    :return: accuracy in [0, 1].
    """
    logits, labels = predict(model, loader)
    return float((logits.argmax(dim=1) == labels).float().mean())


@overload
def train_dense(
    epochs: int = ..., seed: int = ..., loaders: tuple[DataLoader[Any], DataLoader[Any]] | None = ...,
    lr: float = ..., progress: bool = ...,
) -> DigitsCNN: ...


@overload
def train_dense(
    epochs: int = ..., seed: int = ..., loaders: tuple[DataLoader[Any], DataLoader[Any]] | None = ...,
    lr: float = ..., progress: bool = ..., *, factory: Callable[[], M],
) -> M: ...


def train_dense(
    epochs: int = DENSE_EPOCHS, seed: int = 0, loaders: tuple[DataLoader[Any], DataLoader[Any]] | None = None,
    lr: float = 1e-2, progress: bool = False, factory: Callable[[], nn.Module] = DigitsCNN,
) -> nn.Module:
    """Train a :class:`DigitsCNN` (or the model ``factory`` makes) from a seeded initialisation (Adam,
    cosine learning rate).

    :param epochs: training epochs.
    :param seed: seed of the initialisation and of the data order.
    :param loaders: ``(train, test)`` loaders; default :func:`digits_loaders` with ``seed``.
    :param lr: peak learning rate.
    :param progress: show a tqdm bar over the epochs, with the last epoch's loss.
    :param factory: makes the untrained model (called after seeding), e.g.
        ``lambda: CifarResNet(in_channels=1, widths=(16, 32, 64))``.
    :return: the trained model, in train mode.
    """
    torch.manual_seed(seed)
    train, _ = loaders if loaders is not None else digits_loaders(seed=seed)
    model = factory()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    bar = tqdm(range(epochs), desc="dense", disable=not progress)
    for _ in bar:
        bar.set_postfix(loss=f"{train_epoch(model, train, optimizer):.4f}", refresh=False)
        schedule.step()
    return model
