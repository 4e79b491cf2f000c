"""A run in napari: every micrograph with its phase labels over it, each layer named for its image and what it is.

``store.zarr`` is an OME-Zarr collection that napari-ome-zarr opens whole
(``napari --plugin napari-ome-zarr OUT/store.zarr``); that reader names a label
layer by its path inside the store and hides it. :func:`layers` takes the same
reader's layers and puts each image's phases over it, visible, as
``"<image>: micrograph"`` and ``"<image>: phases"`` (the labels carry each
phase's name and colour). Needs ``pip install napari napari-ome-zarr``.
"""

from __future__ import annotations

import re
from pathlib import Path

#: the label layer napari-ome-zarr makes of ``images/<id>/labels/phases``, by name
_LABELS_PATH = re.compile(r"images/(?P<image>.+)/labels/phases$")


def layers(run, images=None) -> list[tuple]:
    """napari layer data ``(data, metadata, kind)`` of a run: per image, the micrograph, then its phases.

    Parameters
    ----------
    run : str or Path
        A run's output folder (holding ``store.zarr``), or the store itself.
    images : list of str, optional
        The image ids (file stems) to show, in order; default every image.

    Returns
    -------
    list of (data, dict, str)
        For ``viewer.add_image(data, **meta)`` and ``viewer.add_labels(data, **meta)``
        in turn: images named ``"<id>: micrograph"``, labels ``"<id>: phases"``,
        shown over their image (visible), on the image's grid and scale. With
        ``viewer.grid.enabled = True`` and ``viewer.grid.stride = 2`` napari
        shows one image with its phases per grid cell.

    Raises
    ------
    ImportError
        Without napari-ome-zarr, naming it.
    ValueError
        When ``run`` holds no store, or an asked-for image is not in it.
    """
    try:
        from napari_ome_zarr._reader import napari_get_reader
    except ImportError as exc:
        raise ImportError(f"opening a run in napari needs napari-ome-zarr (pip install napari napari-ome-zarr): "
                          f"{exc}") from None
    path = Path(run)
    store = path if path.name.endswith(".zarr") else path / "store.zarr"
    reader = napari_get_reader(str(store)) if store.is_dir() else None
    if reader is None:
        raise ValueError(f"{run}: no store.zarr of a bigseg run here")
    found: dict[str, dict[str, tuple]] = {}
    for data, meta, kind in reader():
        meta = dict(meta)
        if kind == "labels":
            match = _LABELS_PATH.search(str(meta.get("name", "")))
            if not match:
                continue
            image_id = match["image"]
            meta.update(name=f"{image_id}: phases", visible=True, opacity=0.5)
        elif kind == "image":
            image_id = str(meta.get("name", "")).split(": ")[0]
            meta.update(name=f"{image_id}: micrograph")
        else:
            continue
        found.setdefault(image_id, {})[kind] = (data, meta, kind)
    wanted = list(found) if images is None else [str(i) for i in images]
    missing = [i for i in wanted if i not in found]
    if missing:
        raise ValueError(f"{run}: no image {missing[0]!r} in its store (it holds {', '.join(found) or 'none'})")
    return [found[i][kind] for i in wanted for kind in ("image", "labels") if kind in found[i]]
