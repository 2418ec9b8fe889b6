r"""The entry point of the data layer: :func:`load_data` resolves any ``--data`` spec."""

from __future__ import annotations

from pathlib import Path

from .._errors import GanflowError
from ..targets import GaussianMixture, load_target, named_targets
from .images import IMAGE_DATA, is_image_spec, load_images
from .tables import SAMPLE_ONLY, Dataset, mixture_dataset, table_dataset

__all__ = ["data_names", "load_data"]


def data_names() -> list[str]:
    """Named data sets accepted by :func:`load_data` (besides mixture specs and files)."""
    return sorted(set(named_targets()) | set(SAMPLE_ONLY) | set(IMAGE_DATA))



def load_data(spec: str | Path | GaussianMixture | Dataset) -> Dataset:
    """Resolve a data description to a :class:`Dataset`.

    ``spec`` is a :class:`Dataset` (returned as is), a :class:`GaussianMixture`, a named
    data set (:func:`data_names`), ``normal:MEAN:STD``, or a file path: ``.json`` (a
    mixture), ``.npy`` / ``.csv`` (a table of shape (n, d)); or image data
    (:mod:`ganflow.data.images`): ``digits``, ``mnist``, ``mnist:PATH``, a ``.npz`` / ``.pkl.gz``
    file or a folder of PNG images.
    """
    if isinstance(spec, Dataset):
        return spec
    if isinstance(spec, GaussianMixture):
        return mixture_dataset(spec)
    text = str(spec)
    if text in SAMPLE_ONLY:
        sampler, scale = SAMPLE_ONLY[text]
        return Dataset(text, 2, scale, sampler)
    if is_image_spec(text) and text not in named_targets():  # a folder named 'ring8' stays ring8
        return load_images(text)
    suffix = Path(text).suffix.lower()
    if suffix in (".npy", ".csv"):
        return table_dataset(Path(text))
    try:
        mixture = load_target(text)
    except GanflowError as exc:
        if text in named_targets() or text.startswith("normal:") or suffix == ".json":
            raise
        raise GanflowError(
            f"unknown data {text!r}: expected one of {data_names()}, 'normal:MEAN:STD', "
            f"'mnist:PATH', a .json (mixture), .npy or .csv (table of shape (n, d)) file, a "
            f".npz file of images or a folder of PNG images"
        ) from exc
    return mixture_dataset(mixture)


