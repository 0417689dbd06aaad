"""``Dataset``: calibration data for post-training quantization, as in NNCF 3.x."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from nncompress.errors import InitDataError, InputInfoError, InvalidArgumentError
from nncompress.torch.calibration import batch_size
from nncompress.torch.inputs import ModelInputs, split_batch


class Dataset:
    """Wraps any iterable of data items and turns each into model inputs.

    Each item (after ``transform_fn``) is one call of the model: a tensor, an ``(inputs, target)``
    pair, a tuple of positional inputs inside a pair, or a dict of keyword inputs. Items may be
    batches; ``quantize(subset_size=...)`` counts samples along the first axis.

    Example::

        loader = DataLoader(test_set, batch_size=64)
        calibration = nnc.Dataset(loader, lambda item: item[0])  # images only

    :param data_source: an iterable (a list, a ``DataLoader``, a generator function's result is
        consumed once).
    :param transform_fn: turns one item into model inputs; identity if ``None``.
    :raises InvalidArgumentError: if ``data_source`` is not iterable or ``transform_fn`` not callable.
    """

    def __init__(self, data_source: Iterable[Any], transform_fn: Callable[[Any], Any] | None = None) -> None:
        if not isinstance(data_source, Iterable):
            raise InvalidArgumentError(
                f"data_source must be iterable (a list, DataLoader, ...), got {type(data_source).__name__}"
            )
        if transform_fn is not None and not callable(transform_fn):
            raise InvalidArgumentError(
                f"transform_fn must be callable or None, got {type(transform_fn).__name__}"
            )
        self._source = data_source
        self._transform = transform_fn

    def get_data(self, indices: list[int] | None = None) -> Iterator[Any]:
        """The raw items (those at ``indices``, sorted, if given)."""
        wanted = sorted(set(indices)) if indices is not None else None
        for i, item in enumerate(self._source):
            if wanted is not None:
                if not wanted:
                    return
                if i != wanted[0]:
                    continue
                wanted.pop(0)
            yield item

    def get_inference_data(self, indices: list[int] | None = None) -> Iterator[Any]:
        """The items after ``transform_fn``: what the model is called with."""
        for item in self.get_data(indices):
            yield item if self._transform is None else self._transform(item)

    def get_length(self) -> int | None:
        """Number of items, if the source has a length."""
        return len(self._source) if hasattr(self._source, "__len__") else None  # type: ignore[arg-type]

    def get_batch_size(self) -> int | None:
        """The source's ``batch_size`` (a ``DataLoader``'s), if it has one."""
        size = getattr(self._source, "batch_size", None)
        return size if isinstance(size, int) else None


def take_samples(dataset: Dataset, subset_size: int, what: str = "calibration_dataset") -> tuple[list[ModelInputs], int]:
    """The first items of ``dataset`` as model inputs, until ``subset_size`` samples are reached.

    :return: ``(samples, count)``: the ``(args, kwargs)`` of each item and the number of samples
        they hold (items may be batches).
    :raises InitDataError: for an item that is not model inputs (named by index) or an empty dataset.
    """
    samples: list[ModelInputs] = []
    count = 0
    for i, item in enumerate(dataset.get_inference_data()):
        try:
            args, kwargs = split_batch(item)
        except InputInfoError as exc:
            raise InitDataError(f"calibration item {i}: {exc}") from exc
        samples.append((args, kwargs))
        count += batch_size(args, kwargs)
        if count >= subset_size:
            break
    if not samples:
        raise InitDataError(f"{what} is empty: at least one item is needed")
    return samples, count
