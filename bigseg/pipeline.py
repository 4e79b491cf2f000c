"""The stages in order over one output folder, resuming where a killed run stopped.

Each stage builds one dask graph for all images that still need it and
computes it once at its end. Per-image completion records (written last, after
every output of that image) decide what a re-run skips. What each image and the
folder show (PNGs, tables) is written by :mod:`bigseg.export`, the page by
:mod:`bigseg.report`; the per-tile kernels are :mod:`bigseg.segment`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np

from . import __version__, clahe, estimator, features, io, preprocess, regions, rename, store
from .config import FIT_KEYS, SEGMENT_KEYS, ConfigError, check_same, model_bound, resolved_store_features
from .export import (EXPORT_DIRS, export_constituents, export_constituents_large, export_image, export_large,
                     write_tables)
from .lock import OUTPUT_ENTRIES, output_lock
from .safety import excerpt
from .report import write_report
from .model import Model, ModelError, fit, regularisation, void_split
from .segment import activations_graph
from .viz import PALETTE

log = logging.getLogger("bigseg")


class StageError(RuntimeError):
    """A stage failed on one image; the message names both."""


def _guard(stage: str, image_id: str, func, *args, **kwargs):
    try:
        return func(*args, **kwargs)
    except StageError:
        raise
    except Exception as exc:
        raise StageError(f"{stage} failed on image {image_id!r}: {type(exc).__name__}: {exc}") from exc


# --- ingest -----------------------------------------------------------------------

def ingest_one(path: str, image_id: str, store_path: str, out_dir: str, record: dict,
               max_pixels: int = io.MAX_IMAGE_PIXELS) -> dict:
    """Read, grey, crop and store one file. Never raises: a bad file is reported, not fatal.

    ``record`` (from :func:`_ingest_record`) holds the crop setting and the pixel
    size inputs; a file declaring more than ``max_pixels`` is refused unread.
    Tiled TIFFs, very large TIFF pages and Zarr / OME-Zarr arrays
    are copied a band of rows at a time, so no input is ever held whole.
    """
    crop_bottom = record["crop_setting"]
    try:
        if image_id == "zarr.json" or image_id.startswith("__") or image_id in (".", ".."):
            raise io.ImageReadError(f"{path}: its name {image_id!r} is reserved by Zarr and cannot name an image "
                                    f"in the store; rename the file")
        if io.is_chunked_input(path):
            with io.ChunkedImage(path, max_pixels=max_pixels) as img:
                crop = io.detect_data_bar_banded(img) if crop_bottom == "auto" else int(crop_bottom)
                shape = (img.shape[0] - crop, img.shape[1])
                if shape[0] <= 0:
                    raise io.ImageReadError(f"{path}: crop_bottom={crop} removes the whole image ({img.shape[0]} rows)")
                prov = _provenance(path, image_id, img, crop, crop_bottom, shape, img.dtype, record)
                store.write_image_bands(store.open_root(store_path), image_id, img.rows, shape, img.dtype, prov)
        else:
            img = io.read_image(path, max_pixels=max_pixels)
            grey, crop = io.crop_rows(img.data, crop_bottom, img.source)
            prov = _provenance(path, image_id, img, crop, crop_bottom, grey.shape, grey.dtype, record)
            store.write_image(store.open_root(store_path), image_id, grey, prov)
        store.mark_done(out_dir, "ingest", image_id, record)
        return {"id": image_id, "ok": True}
    except Exception as exc:  # reported by name and skipped; the batch goes on
        msg = str(exc) if isinstance(exc, io.ImageReadError) else f"{path}: {type(exc).__name__}: {exc}"
        return {"id": image_id, "ok": False, "source": str(path), "stage": "ingest", "error": msg}


def _provenance(path, image_id, img, crop, crop_setting, shape, dtype, record) -> dict:
    """What the store records about one ingested image; the pixel size comes from the sidecar table first,
    then the file's own metadata, then the ``pixel_size`` setting."""
    sidecar_pixel_size, pixel_size_default = record["pixel_inputs"]
    px, px_source = io.choose_pixel_size(sidecar_pixel_size, img.pixel_size, img.pixel_size_source,
                                         pixel_size_default)
    return {"id": image_id, "source": str(Path(path).resolve()), "original_shape": list(img.original_shape),
            "original_dtype": img.original_dtype, "stored_dtype": str(np.dtype(dtype)), "crop_bottom": int(crop),
            "crop_setting": crop_setting, "shape": [int(s) for s in shape], "pixel_size": px,
            "pixel_size_source": px_source}


def _ingest_record(source: str, identity: dict | None, settings: dict, table, image_id: str) -> dict:
    """What an ingest record must say for a stored image to be reused as is: the file's identity
    (size, time, content hash) and the settings that shaped what was stored."""
    return {"source": source, "input": identity, "crop_setting": settings["crop_bottom"],
            "pixel_inputs": [(table or {}).get(image_id), settings["pixel_size"]]}


def not_outputs(paths, out_dir) -> list[Path]:
    """``paths`` without the files this output folder's runs wrote (``--input D --out D``, or OUT inside the
    input folder): a run's pictures are never micrographs of the next one."""
    out_dir = Path(out_dir).resolve()
    own = [out_dir / name for name in OUTPUT_ENTRIES]
    kept = []
    for p in paths:
        where = Path(p).resolve()
        if any(where == o or o in where.parents for o in own):
            log.info("%s: an output of this folder's runs, not a micrograph; left out", p)
        else:
            kept.append(p)
    return kept


def ingest(paths, out_dir, settings, runner) -> tuple[list[str], list[dict]]:
    """Store every readable input; return the ids in the store and the skipped files."""
    import dask

    out_dir = Path(out_dir)
    paths = not_outputs([Path(p) for p in paths], out_dir)
    ids = io.image_ids(paths)
    table = io.read_pixel_sizes(settings["pixel_size_csv"]) if settings["pixel_size_csv"] else None
    store_path = str(out_dir / "store.zarr")
    # parallel ingest tasks each add a child to "images"; creating the parent here
    # keeps them from racing to create it (a lost race skipped an image)
    store.open_root(store_path).require_group("images")

    def build(item):
        p, image_id = item
        record = _ingest_record(str(p.resolve()), store.file_identity(p), settings, table, image_id)
        if store.is_done(out_dir, "ingest", image_id) and store.read_record(out_dir, "ingest", image_id) == record:
            return None
        for stage in ("features", "segment"):   # a re-ingested image needs everything again
            store.record_path(out_dir, stage, image_id).unlink(missing_ok=True)
        return dask.delayed(ingest_one, pure=False)(str(p), image_id, store_path, str(out_dir), record,
                                                    settings["max_image_pixels"])

    results = runner.compute_batches(zip(paths, ids), build, "ingest")
    skipped = [r for r in results if not r["ok"]]
    for r in skipped:
        log.warning("skipped %s", r["error"])
    ok = [i for i in ids if store.is_done(out_dir, "ingest", i)]
    store.write_index(store.open_root(store_path), out_dir)   # the store opens whole after ingest alone too
    return ok, skipped


# --- features ------------------------------------------------------------------------

def at_one_scale(out_dir, ids, settings) -> tuple[dict, dict]:
    """``settings`` with the stored images' one scale (``preprocess.scaled_settings``), and the images
    that cannot be brought to it, ``{id: why}`` (``preprocess.scale_mismatch``).

    A fit's settings become its images' scale here, before any feature is
    computed; settings that hold a scale already (a model's) stay as they are.
    """
    root = store.open_root(Path(out_dir) / "store.zarr")
    infos = {image_id: store.image_info(root, image_id) for image_id in ids}
    if not isinstance(settings["resize"], dict):
        settings = preprocess.scaled_settings(settings, [info["shape"] for info in infos.values()],
                                              [info.get("pixel_size") for info in infos.values()])
    unmatched = {image_id: why for image_id, info in infos.items()
                 if (why := preprocess.scale_mismatch(settings["resize"], info.get("pixel_size"), image_id))}
    return settings, unmatched


def processing_shape(root, image_id: str, settings: dict) -> tuple[int, int]:
    """The processing grid of a stored image (its pixel size matters when resize is 'physical')."""
    info = store.image_info(root, image_id)
    return preprocess.target_shape(info["shape"], settings["resize"], info.get("pixel_size"),
                                   settings["target_pixel_size"], image_id)


def checked_shape(root, image_id: str, settings: dict) -> tuple[int, int]:
    """The processing grid of a stored image, after checking both it and the image can carry the halo.

    Raises ``ImageTooSmallError``, or ``ValueError`` when resize is 'physical' and the pixel size is unknown.
    """
    info = store.image_info(root, image_id)
    return estimator.processing_shape(info["shape"], settings, info.get("pixel_size"), image_id)


def _skip(skipped: list, image_id: str, exc: Exception) -> None:
    log.warning("skipped %s", exc)
    skipped.append({"id": image_id, "stage": "features", "error": str(exc)})


def _failure(stage: str, image_id: str, exc: Exception) -> dict:
    """The skipped-image entry of an image whose computation failed; logged once, by name."""
    msg = str(exc) if isinstance(exc, StageError) else f"{stage} failed on image {image_id!r}: " \
        f"{type(exc).__name__}: {exc}"
    msg = " ".join(msg.split())    # one line, whatever the library's message held
    log.warning("skipped %s", msg)
    return {"id": image_id, "stage": stage, "error": msg}


def lazy_features(root, image_id: str, settings: dict):
    """Lazy (y, x, f) features of a stored image.

    A large 8/16-bit image at native resolution is preprocessed tile by tile
    (``clahe.preprocess_graph``, equal to the whole-frame result bit for bit),
    so its size is bounded by disk, not memory. Other images are preprocessed
    as one block, which is about twice as fast: the resize and CLAHE see the
    whole frame.
    """
    img = store.lazy_image(root, image_id)
    shape = checked_shape(root, image_id, settings)
    if tiled_preprocessing(img, shape, settings):
        pp = {k: settings[k] for k in ("resize", "normalize_percentiles", "clahe", "clahe_clip_limit",
                                       "clahe_kernel_size", "void_class")}
        pre, plane = clahe.preprocess_planes(root[f"images/{image_id}/0"], pp, features.chunk_side(shape, settings),
                                             name=image_id)
        return features.stack_features(pre, plane, settings, image_id)
    # the per-image path of the Python API, on the stored image
    return estimator.lazy_features(img, settings, store.image_info(root, image_id).get("pixel_size"), image_id)


def tiled_preprocessing(img, shape, settings) -> bool:
    """Whether this image is preprocessed tile by tile: large, native grid, 8/16-bit, tiles scikit-image
    would pad once."""
    return (tuple(img.shape) == tuple(shape) and img.shape[0] * img.shape[1] > io.LARGE_IMAGE_PIXELS
            and np.dtype(img.dtype).kind == "u" and np.dtype(img.dtype).itemsize <= 2
            and clahe.supports(shape, clahe.kernel_shape(shape, settings["clahe_kernel_size"])))


def stored_feature_settings(store_path, image_id):
    attrs = store.open_features(store_path, image_id).attrs
    return json.loads(attrs["settings"])


def compute_features_stage(out_dir, ids, settings, runner) -> tuple[list[str], list[dict]]:
    """Write features of every image not done yet; return usable ids and skipped ones."""
    out_dir = Path(out_dir)
    store_path = out_dir / "store.zarr"
    root = store.open_root(store_path)
    settings, _ = at_one_scale(out_dir, ids, settings)
    names = features.stack_names(settings)
    attrs = {"settings": json.dumps(model_bound(settings), sort_keys=True),
             "halo": features.halo(settings), "bigseg_version": __version__}
    ok, skipped = [], []

    def build(image_id):
        stored = stored_feature_settings(store_path, image_id) if store.is_done(out_dir, "features", image_id) \
            else None
        if stored is not None and preprocess.scale_settings(stored) == preprocess.scale_settings(settings):
            check_same(model_bound(settings), stored, f"the stored features of {image_id!r}")
            ok.append(image_id)
            return None
        if stored is not None:       # computed at the scale of another set of images: computed again
            check_same(model_bound(settings), dict(stored, **preprocess.scale_settings(settings)),
                       f"the stored features of {image_id!r}")
            store.record_path(out_dir, "features", image_id).unlink(missing_ok=True)
        try:
            feats = lazy_features(root, image_id, settings)
        except (features.ImageTooSmallError, ValueError) as exc:   # too small, or pixel size unknown
            _skip(skipped, image_id, exc)
            return None
        write = store.features_to_zarr(store_path, image_id, feats, names, attrs, settings["feature_dtype"],
                                       settings["feature_keep_bits"])
        if image_id not in ok:   # built again after a failed batch
            ok.append(image_id)
        return _after(write, store.mark_done, str(out_dir), "features", image_id)

    def failed(image_id, exc):
        ok.remove(image_id)
        skipped.append(_failure("features", image_id, exc))

    runner.compute_batches(ids, build, "features", on_error=failed)
    return ok, skipped


def _after(dependency, func, *args):
    """A delayed call of ``func(*args)`` that runs only once ``dependency`` is done."""
    import dask

    return dask.delayed(_call_after, pure=False)(dependency, func, *args)


def _call_after(_done, func, *args):
    return func(*args)


class FeatureSources:
    """The lazy feature arrays of stored images as a sequence, each graph built when asked for.

    Fitting over an archive then holds one batch of graphs at a time, not one per image.
    """

    def __init__(self, out_dir, ids, settings):
        self.out_dir, self.ids, self.settings = out_dir, list(ids), settings

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return feature_source(self.out_dir, self.ids[i], self.settings)


def feature_source(out_dir, image_id, settings):
    """Stored features when present, else a lazy recomputation from the stored image."""
    store_path = Path(out_dir) / "store.zarr"
    if store.is_done(out_dir, "features", image_id):
        return store.open_features(store_path, image_id).data
    return lazy_features(store.open_root(store_path), image_id, settings)


# --- fit -------------------------------------------------------------------------------

#: the per-image exports of the segment stage, forgotten whole when the folder's model changes


def inputs_digest(out_dir, ids) -> str:
    """One hash of the images a fit saw: their ids, contents and ingest settings (not where they lie)."""
    digest = hashlib.sha256()
    for image_id in sorted(ids):
        rec = store.read_record(out_dir, "ingest", image_id)
        digest.update(json.dumps([image_id, rec.get("input"), rec.get("crop_setting"), rec.get("pixel_inputs")],
                                 sort_keys=True).encode())
    return digest.hexdigest()


def model_digest(model: Model) -> str:
    """One hash of what a model computes: H, the scaling, the feature names and model-bound settings."""
    digest = hashlib.sha256()
    for arr in (model.H, model.scale_lo, model.scale_hi):
        digest.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    digest.update(json.dumps([list(model.feature_names), model_bound(model.settings), list(model.transitions),
                              model.void_below], sort_keys=True).encode())
    if model.constituents is not None:     # a model without them hashes as before
        for key in ("H", "centres", "lo", "hi"):
            digest.update(np.ascontiguousarray(model.constituents[key], dtype=np.float64).tobytes())
        digest.update(json.dumps(model.constituents["sigmas"]).encode())
    return digest.hexdigest()


def fit_stage(out_dir, ids, settings, runner) -> Model:
    """Fit (or reuse a finished fit of the same settings on the same images) and save ``model/``.

    A new fit forgets every earlier segmentation in the folder, so no label map
    of the old model survives beside the new one.
    """
    out_dir = Path(out_dir)
    model_dir = out_dir / "model"
    if not ids:
        raise ValueError("no image to fit on: every input was skipped")
    settings, _ = at_one_scale(out_dir, ids, settings)
    seen = inputs_digest(out_dir, ids)
    if model_dir.exists():
        try:
            existing = Model.load(model_dir)
        except ModelError:
            existing = None
        if existing is not None:
            # the images' scale may change with the images (a new one joins): that is a new fit, not a conflict
            existing.check_settings(dict(settings, **preprocess.scale_settings(existing.settings)))
            asked = dict(existing.settings, n_components="auto") if "n_components_auto" in existing.report \
                else existing.settings
            level = "n_constituents"      # absent from models saved before the level existed: 0
            if (all(_same(asked.get(k), settings[k]) for k in FIT_KEYS + preprocess.SCALE_SETTINGS if k != level)
                    and existing.report.get("inputs") == seen):
                if asked.get(level, 0) == settings[level]:
                    log.info("reusing the fitted model in %s", model_dir)
                    return existing
                # the phases are the same: only the constituent level is fitted again (their labels stay)
                log.info("reusing the fitted phases in %s; fitting the constituent level", model_dir)
                existing.settings = dict(existing.settings, **{level: settings[level]})
                existing.report.pop("constituents", None)
                return _with_constituents(out_dir, existing, FeatureSources(out_dir, ids, settings), settings,
                                          runner)
    sources = FeatureSources(out_dir, ids, settings)
    # one bar: the images sampled, then the fit's steps (the NMF, its boundary components, the phases, the
    # constituent level); it reaches its total when the model is saved
    steps = FIT_STEPS + bool(settings["n_constituents"])
    with runner.progress("fit", len(ids) + steps, "step", counted=len(ids), note="sampling pixels",
                         after="NMF") as bar:
        hooks = regions.fit_hooks(lambda: estimator.transition_windows(
            sources, lambda objs: runner.compute(objs, "fit: boundaries")), settings)
        model = fit(sources, features.feature_names(settings), settings, lambda objs: runner.compute(objs),
                    log=_noting(bar, log.info), batch_images=runner.batch_images, **_stepping(hooks, bar),
                    scan_progress=_scanning(bar, settings))
        model.report["images"] = len(ids)
        model.report["inputs"] = seen
        if bar is not None:
            bar.step("constituents" if settings["n_constituents"] else "saving the model")
        model = _with_constituents(out_dir, model, sources, settings, runner)
        if bar is not None:
            bar.finish()
    r = model.report
    log.info("fit (%s): relative error %.4f, %d iterations, converged=%s", r["solver"], r["relative_error"],
             r["n_iter"], r["converged"])
    if model.transitions:
        log.info("%d component(s) live on phase boundaries (between shares %s): they explain edges and label no "
                 "pixel; %d phases", len(model.transitions), r.get("between_shares"), model.n_phases)
    return model


#: the steps the fit's bar counts after its sampled images: the NMF, the boundary components, the phases
FIT_STEPS = 3


def _stepping(hooks: dict, bar) -> dict:
    """The fit's callbacks (``regions.fit_hooks``), each marking the step before it done on ``bar``: the NMF is
    done when the boundary components are looked for, those when the phases are assigned."""
    if bar is None:
        return hooks
    notes = {"find_transitions": "boundary components", "choose_assignment": "phase assignment"}

    def marking(name, func):
        def call(*args, **kwargs):
            bar.step(notes[name])
            return func(*args, **kwargs)
        return call

    return {name: marking(name, func) if name in notes and func is not None else func for name, func in hooks.items()}


def _scanning(bar, settings):
    """The fit's note on ``bar`` for each fit of ``n_components: auto``'s scan (none without the scan or a bar)."""
    if bar is None or settings["n_components"] != "auto":
        return None
    from .selectk import AUTO_SEEDS

    return lambda k, seed: bar.note(f"n_components auto: k={k}, fit {seed + 1} of {AUTO_SEEDS}")


def _noting(bar, log_info):
    """The fit's log, its streamed passes also shown on ``bar`` (a pass can take minutes on an archive)."""
    if bar is None:
        return log_info

    def say(message):
        log_info(message)
        if message.startswith("minibatch pass"):
            bar.note("NMF, " + message.split(":")[0])
    return say


def _with_constituents(out_dir, model: Model, sources, settings, runner) -> Model:
    """``model`` with its microconstituent level fitted (``n_constituents``; the API's
    ``estimator.fit_constituents``), made the folder's model."""
    estimator.fit_constituents(model, sources, lambda objs: runner.compute(objs, "fit: constituents"), settings)
    adopt_model(out_dir, model)
    return model


def _same(a, b):
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# --- segment ---------------------------------------------------------------------------

def adopt_model(out_dir, model: Model) -> None:
    """Make ``model`` the folder's model; if it differs from the one there, forget the old one's labels first."""
    model_dir = Path(out_dir) / "model"
    try:
        same = model_dir.exists() and model_digest(Model.load(model_dir)) == model_digest(model)
    except ModelError:
        same = False
    if same:
        return
    if model_dir.exists() or (Path(out_dir) / "records" / "segment").exists():
        store.clear_segmentation(out_dir, EXPORT_DIRS)
        (Path(out_dir) / rename.PENDING).unlink(missing_ok=True)     # no picture of the old model is left
    model.save(model_dir)


def segment_stage(out_dir, ids, model: Model, settings, runner) -> tuple[list[str], list[dict]]:
    """Activations, labels and exports of every image not done yet; returns the ids segmented now and the
    images that failed (each reported and skipped; the others complete)."""
    import dask

    out_dir = Path(out_dir)
    root = store.open_root(out_dir / "store.zarr")
    l1, l2 = regularisation(model.settings, model.H.shape[1])
    k, n_phases = model.n_components, model.n_phases
    # a record made with other spatial settings is stale: those labels are redone
    made_by = {"settings": {key: settings[key] for key in SEGMENT_KEYS}, "model": model_digest(model)}
    large, skipped = [], []
    names = model.phase_names     # the OME labels' and memberships' phase names

    def build(image_id):
        if segment_current(out_dir, image_id, made_by):
            return None
        if image_id in large:       # segmented band by band before the others, with a bar of its own
            return None
        if estimator.one_chunk(checked_shape(root, image_id, settings), settings):
            # the per-image path in one task: no graph to build per image, and the store's arrays are made
            # in the worker threads too, so the scheduler's thread only hands out images
            return dask.delayed(_segment_whole, pure=False)(str(out_dir), image_id, model, settings, made_by)
        feats = feature_source(out_dir, image_id, settings)
        acts = activations_graph(feats, model.H, model.scale_lo, model.scale_hi, l1, l2,
                                 settings["spatial_weight"], settings["spatial_sweeps"],
                                 model.void_below).transpose(2, 0, 1)
        chunk = features.chunk_side(acts.shape[1:], settings)
        act_arr = store.create_activations(root, image_id, acts.shape[1:], k, chunk)
        native = tuple(store.image_info(root, image_id)["shape"])
        memb_arr = store.create_activations(root, image_id, acts.shape[1:], n_phases, chunk, "memberships",
                                            "float16", names=names, colors=PALETTE)
        lab_arr = store.create_labels(root, image_id, native, n_phases, PALETTE, max(chunk, 512), names=names)
        # the tiles compute in parallel, then one task stores them and exports from memory (a second consumer
        # of the lazy array computed every tile twice; reading the store back cost a read). The tiles go in as
        # delayed objects: dask hands an array argument to a task through a renaming that imports distributed
        tiles = acts.to_delayed().tolist()
        fractions = dask.delayed(_store_and_export, pure=False)(tiles, act_arr, memb_arr, native, str(out_dir),
                                                                image_id, lab_arr, model, list(names),
                                                                root[f"images/{image_id}/0"], settings)
        return dask.delayed(_finish, pure=False)(fractions, str(out_dir), image_id, made_by)

    # images too large for one graph first, each with its own bar, so the stage's bar, which counts them as
    # done, never reads 100 % while one of them is left
    large += [i for i in ids if not segment_current(out_dir, i, made_by) and _is_large(root, i, settings)]
    done_now = []
    for image_id in large:
        try:
            segment_large(out_dir, root, image_id, model, settings, runner, made_by)
            done_now.append(image_id)
        except Exception as exc:   # one montage failing costs only itself
            skipped.append(_failure("segment", image_id, exc))
    done_now += runner.compute_batches(ids, build, "segment",
                                       on_error=lambda i, exc: skipped.append(_failure("segment", i, exc)))
    store.write_index(root, out_dir)      # the store root lists every image (an OME-Zarr collection)
    return done_now, skipped


def segment_current(out_dir, image_id: str, made_by: dict) -> bool:
    """Whether the image's labels exist and were made by this model with these segment settings."""
    if not store.is_done(out_dir, "segment", image_id):
        return False
    rec = store.read_record(out_dir, "segment", image_id)
    return all(rec.get(key) == value for key, value in made_by.items())


#: pixels per band when a large image is segmented a band of rows at a time; at 20,000 x 20,000,
#: 16 Mpx bands ran no faster (530 s against 521 s) and peaked higher (599 against 535 MiB)
BAND_PIXELS = 8 * 1024 * 1024


def _is_large(root, image_id, settings) -> bool:
    """Too large for one graph: segmented band by band (native grid, tiled preprocessing possible)."""
    shape = tuple(store.image_info(root, image_id)["shape"])
    return (shape[0] * shape[1] > io.LARGE_IMAGE_PIXELS
            and tiled_preprocessing(store.lazy_image(root, image_id), processing_shape(root, image_id, settings),
                                    settings))


def segment_large(out_dir, root, image_id: str, model: Model, settings: dict, runner, made_by) -> None:
    """Segment an image too large to hold: its preprocessing constants first, then one band of rows at a time.

    Each band is read with a margin of ``halo + spatial_sweeps`` rows on both
    sides, the boundary-pixel step's halo and the constituents' windows' halo,
    so its rows (phases and constituents) come out exactly as in one
    whole-image graph; only the margins are computed twice. Memory is bounded
    by the band (``BAND_PIXELS``), not by the image, whatever order the
    scheduler picks inside a band.
    """
    out_dir = Path(out_dir)
    source = root[f"images/{image_id}/0"]
    h, w = (int(v) for v in source.shape)
    chunk = features.chunk_side((h, w), settings)
    band = max(chunk, BAND_PIXELS // max(w, 1) // chunk * chunk)
    # one bar for the image: its preprocessing constants, each band of rows, the exports
    with runner.progress(f"segment {image_id}", len(range(0, h, band)) + 2, "step", counted=0,
                         note="preprocessing constants") as bar:
        result, moved = _segment_bands(out_dir, root, source, image_id, model, settings, runner, chunk, band,
                                       bar or _NO_BAR)
    _finish(dict(result, boundary_pixels=round(moved / max(h * w, 1), 6)), str(out_dir), image_id, made_by)


class _NoBar:
    """What a bar's steps do when no bar is shown (``--quiet``)."""

    def step(self, note: str = "") -> None:
        pass


_NO_BAR = _NoBar()


def _segment_bands(out_dir, root, source, image_id, model, settings, runner, chunk, band, bar):
    """:func:`segment_large`'s work, each part marked done on ``bar``: returns the exports' result and the
    count of pixels the boundary-pixel step moved."""
    import dask.array as da

    h, w = (int(v) for v in source.shape)
    k, n_phases = model.n_components, model.n_phases
    l1, l2 = regularisation(model.settings, model.H.shape[1])
    pp = {key: settings[key] for key in ("normalize_percentiles", "clahe", "clahe_clip_limit", "clahe_kernel_size",
                                         "void_class")}
    (stats,) = runner.compute([clahe.stats_graph(source, pp, chunk)], f"segment {image_id}: preprocessing constants")
    bar.step(f"rows 0-{min(h, band)} of {h}")
    # a settled label reads the labels within the boundary step's halo: their rows must come out exact too
    margin = features.segment_halo(settings) + regions.boundary_halo(regions.boundary_radius(settings))
    level = model.constituents
    if level is not None:      # a constituent reads the memberships within its windows' halo
        from .constituents import halo

        margin += halo(level["sigmas"], settings["truncate"])
    moved = 0
    act_arr = store.create_activations(root, image_id, (h, w), k, chunk)
    names = model.phase_names
    memb_arr = store.create_activations(root, image_id, (h, w), n_phases, chunk, "memberships", "float16",
                                        names=names, colors=PALETTE)
    lab_arr = store.create_labels(root, image_id, (h, w), n_phases, PALETTE, chunk, names=names)
    if level is not None:
        con_arr = store.create_labels(root, image_id, (h, w), len(level["names"]), PALETTE, chunk,
                                      names=level["names"], name=store.CONSTITUENTS_NAME)
        con_counts = np.zeros(len(level["names"]), np.int64)
    for r0 in range(0, h, band):
        r1 = min(h, r0 + band)
        e0, e1 = max(0, r0 - margin), min(h, r1 + margin)
        row_chunks = ([r0 - e0] if r0 > e0 else []) + clahe.chunk_lengths(r1 - r0, chunk) + ([e1 - r1] if e1 > r1 else [])
        pre, plane = clahe.preprocess_planes(source, pp, chunk, image_id, stats, (e0, e1), row_chunks)
        acts = activations_graph(features.stack_features(pre, plane, settings, image_id), model.H, model.scale_lo,
                                 model.scale_hi, l1, l2, settings["spatial_weight"], settings["spatial_sweeps"],
                                 model.void_below)
        acts = acts.transpose(2, 0, 1)
        scores, probs, before, after = regions.settled_maps(model, acts, settings)
        band_rows, rows = slice(r0 - e0, r1 - e0), slice(r0, r1)
        labels = scores.argmax(axis=0).astype(np.uint8)
        sources, targets, regions_ = ([acts[:, band_rows], probs[:, band_rows].astype(np.float16), labels[band_rows]],
                                      [act_arr, memb_arr, lab_arr], [(slice(None), rows), (slice(None), rows), (rows,)])
        extra = []
        if level is not None:
            # the native grid: the constituents' labels are the arg max of their scores, as labels_at gives
            con = estimator.constituent_activations(probs, model, settings).argmax(axis=0).astype(np.uint8)[band_rows]
            sources, targets, regions_ = sources + [con], targets + [con_arr], regions_ + [(rows,)]
            extra = [da.bincount(con.ravel().astype(np.intp), minlength=len(con_counts))]
        stored = da.store(**store.store_args(sources, targets, regions_), lock=False, compute=False)
        _, band_moved, *band_counts = runner.compute([stored, (before != after)[band_rows].sum()] + extra,
                                                     f"segment {image_id}: rows {r0}-{r1} of {h}")
        moved += int(band_moved)
        if band_counts:
            con_counts += np.asarray(band_counts[0], np.int64)
        bar.step(f"rows {r1}-{min(h, r1 + band)} of {h}" if r1 < h else "exports")
    # phases as centres are no component's activation: their panels show the memberships
    panels, rows = (act_arr, model.phases) if model.centres is None else (memb_arr, list(range(n_phases)))
    result = export_large(lab_arr, panels, str(out_dir), image_id, rows, names=list(model.phase_names), grey=source,
                          pixel_size=store.image_info(root, image_id).get("pixel_size"))
    if level is not None:
        result.update(export_constituents_large(con_arr, str(out_dir), image_id, level["names"], con_counts, grey=source,
                                                pixel_size=store.image_info(root, image_id).get("pixel_size")))
    bar.step()
    return result, moved


def _segment_whole(out_dir, image_id: str, model: Model, settings: dict, made_by: dict) -> dict:
    """Segment one stored image of one chunk with the API's per-image path, store and export it, record it."""
    return _finish(_guard("segment", image_id, _segment_stored, out_dir, image_id, model, settings),
                   out_dir, image_id, made_by)


def _segment_stored(out_dir, image_id: str, model: Model, settings: dict) -> dict:
    root = store.open_root(Path(out_dir) / "store.zarr")
    source = root[f"images/{image_id}/0"]
    info = store.image_info(root, image_id)
    if store.is_done(out_dir, "features", image_id):     # the features a fit read: the same rounded numbers
        from dask.local import get_sync

        feats = store.open_features(Path(out_dir) / "store.zarr", image_id).data.compute(scheduler=get_sync)
        acts = estimator.block_activations(feats, model, settings)
    else:
        acts = estimator.image_activations(source[...], model, settings, info.get("pixel_size"), image_id)
    k, n_phases, names = model.n_components, model.n_phases, model.phase_names
    chunk = features.chunk_side(acts.shape[1:], settings)
    act_arr = store.create_activations(root, image_id, acts.shape[1:], k, chunk)
    memb_arr = store.create_activations(root, image_id, acts.shape[1:], n_phases, chunk, "memberships",
                                        "float16", names=names, colors=PALETTE)
    native = tuple(info["shape"])
    lab_arr = store.create_labels(root, image_id, native, n_phases, PALETTE, max(chunk, 512), names=names)
    return _store_then_export(acts, act_arr, memb_arr, native, out_dir, image_id, lab_arr, model, list(names), source,
                              settings)


def _store_and_export(tiles, act_arr, memb_arr, native, out_dir, image_id, lab_arr, model, names, grey, settings):
    """Store one image's activations and memberships (every pyramid level), then export from the same
    array in memory. ``tiles``: the activations' blocks, nested as their grid."""
    acts = tiles[0][0][0] if len(tiles) == len(tiles[0]) == len(tiles[0][0]) == 1 else np.block(tiles)
    return _guard("segment", image_id, _store_then_export, acts, act_arr, memb_arr, native, out_dir, image_id,
                  lab_arr, model, names, grey, settings)


def _store_then_export(acts, act_arr, memb_arr, native, out_dir, image_id, lab_arr, model, names, grey, settings):
    scores, probs, before, after = regions.settled_maps(model, acts, settings)
    store.write_whole(act_arr, acts)
    store.write_whole(memb_arr, probs.astype(np.float16))
    pixel_size = store.image_info(store.open_root(Path(out_dir) / "store.zarr"), image_id).get("pixel_size")
    # phases as centres are no component's activation: their panels show the memberships
    result = export_image(acts, native, out_dir, image_id, lab_arr, model.phases, names, grey, scores=scores,
                          panels=None if model.centres is None else probs, pixel_size=pixel_size)
    if model.constituents is not None:
        # the second level reads the settled memberships only: the phase labels above are done already
        level = model.constituents
        arr = store.create_labels(store.open_root(Path(out_dir) / "store.zarr"), image_id, native,
                                  len(level["names"]), PALETTE, max(lab_arr.chunks[0], 512), names=level["names"],
                                  name=store.CONSTITUENTS_NAME)
        result.update(export_constituents(estimator.constituent_activations(probs, model, settings), native,
                                          out_dir, image_id, level["names"], grey, arr, pixel_size))
    return dict(result, boundary_pixels=round(float((before != after).mean()), 6))


def _finish(result, out_dir, image_id, made_by):
    return store.mark_done(out_dir, "segment", image_id, dict(result, **made_by))


# --- reports ---------------------------------------------------------------------------

def current_records(out_dir, ids, made_by: dict) -> list[tuple[str, dict]]:
    """``(image id, segment record)`` of each of ``ids`` whose labels ``made_by`` made (:func:`segment_current`)."""
    return [(image_id, store.read_record(out_dir, "segment", image_id)) for image_id in ids
            if segment_current(out_dir, image_id, made_by)]


def versions() -> dict:
    # from the installed metadata: importing scikit-learn only to read its version
    # cost a segment run 0.8 s
    from importlib.metadata import PackageNotFoundError, version

    out = {"bigseg": __version__, "python": platform.python_version()}
    for name in ("numpy", "dask", "zarr", "xarray", "scikit-learn", "scikit-image"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def run(inputs, out_dir, settings, runner, model: Model | None = None) -> dict:
    """Every stage in order; with ``model`` given, segment only (no refit, features not stored).

    Holds the output folder's lock throughout. One image failing in any stage
    is reported and skipped, the others complete, and ``summary.json`` and
    ``phase_fractions.csv`` are written whatever failed. Returns the summary.
    """
    with output_lock(out_dir):
        return _run(inputs, Path(out_dir), settings, runner, model)


def _run(inputs, out_dir: Path, settings, runner, model: Model | None) -> dict:
    # a model fitted elsewhere (bigseg segment): its fit is not this command's to change
    fitted_elsewhere = model is not None
    settings = runner.resolve(settings)
    timings = {}
    t = time.perf_counter()
    paths = not_outputs(io.find_images(inputs), out_dir)
    if not paths:
        raise FileNotFoundError(f"no image found in {[excerpt(str(i)) for i in inputs]}")
    if model is not None:
        model.check_settings(settings)
        settings = dict(settings, store_features=False)   # new images: features on the fly
    ids, skipped = ingest(paths, out_dir, settings, runner)
    timings["ingest"] = time.perf_counter() - t
    # one scale for every image: the fit's images' or the model's; and why an image cannot be brought to it
    unscaled = model is not None and not isinstance(settings["resize"], (dict, list))
    if unscaled:
        log.warning("the model carries no scale (saved by an older bigseg): each image is resized by "
                    "resize=%s on its own; refit it to segment new images at its images' scale", settings["resize"])
    settings, unmatched = (settings, {}) if unscaled else at_one_scale(out_dir, ids, settings)

    t = time.perf_counter()
    ids, more = prepare_features(out_dir, ids, settings, runner)
    skipped += more
    timings["features"] = time.perf_counter() - t

    if model is None and not ids:
        reasons = "; ".join(s["error"] for s in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        raise ValueError(f"no image to fit on: every input was skipped ({reasons})")

    t = time.perf_counter()
    shown = rename.stored_names(out_dir / "model")     # what the folder's pictures were drawn with
    if model is None:
        model = fit_stage(out_dir, ids, settings, runner)
    else:
        adopt_model(out_dir, model)
    unfinished = rename.pending_names(out_dir)
    _name_phases(out_dir, model, settings, unfinished)
    # a renaming a killed or failed run (or rename) left half done is finished below, as one asked now is
    relabel = unfinished is not None or (shown is not None and shown != model.phase_names)
    timings["fit"] = time.perf_counter() - t

    t = time.perf_counter()
    segmented, more = segment_stage(out_dir, ids, model, settings, runner)
    skipped += more
    failed = {s["id"] for s in more}
    ids = [i for i in ids if i not in failed]
    timings["segment"] = time.perf_counter() - t

    summary = {
        "settings": settings, "n_images": len(ids), "segmented_this_run": len(segmented),
        "skipped": skipped, "model": model.report,
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()}, "scheduler": runner.description,
        "versions": versions(),
        "scale": {"resize": settings["resize"], "clahe_kernel_size": settings["clahe_kernel_size"],
                  "unmatched": {i: why for i, why in unmatched.items() if i in ids}},
    }
    if relabel:
        # images segmented before, under other names: their legends follow (nothing is recomputed); the tables
        # are written anew just below
        rename.apply_names(out_dir, model, tables=False)
    root = store.open_root(out_dir / "store.zarr")
    write_tables(out_dir, current_records(out_dir, ids, {"model": model_digest(model)}), model, summary,
                 {i: store.image_info(root, i).get("pixel_size") for i in ids})
    write_report(out_dir)
    for warning in summary["warnings"]:
        if fitted_elsewhere and warning["kind"] == "not_converged":
            continue        # still in summary.json; said where the fit is made (run, fit)
        log.warning("%s; %s", warning["message"], warning["suggestion"])
    return summary


def _name_phases(out_dir, model: Model, settings, unfinished=None) -> None:
    """The ``phase_names`` setting (when given) names the model's phases; ``model/`` keeps the names shown.

    Without the setting, the names of a renaming left ``unfinished`` (by a
    rename or run stopped half-way) are the ones it meant to give.

    When the model in the folder had other names (pictures may show them),
    the renaming is recorded as under way before the model changes, so a
    run stopped before its pictures follow has the next one finish them.
    Raises ``ConfigError`` when the count is not the model's phase count,
    which is known only once the fit has found its boundaries.
    """
    if settings["phase_names"] is not None:
        try:
            rename.set_names(model, settings["phase_names"])
        except ValueError as exc:
            raise ConfigError(f"{exc} (the model has {model.n_phases}: {', '.join(model.phase_names)})") from None
    elif unfinished is not None and len(unfinished) == model.n_phases:
        try:
            rename.set_names(model, unfinished)
        except ValueError:      # a record that is no list of names: the model's own names stand
            pass
    if rename.stored_names(Path(out_dir) / "model") != model.phase_names:
        if rename.stored_names(Path(out_dir) / "model") is not None:
            rename.mark_pending(out_dir, model.phase_names)
        rename.write_model_names(Path(out_dir) / "model", model)


def prepare_features(out_dir, ids, settings, runner) -> tuple[list[str], list[dict]]:
    """Store the features (``store_features``) or only check that each image can have them."""
    if resolved_store_features(settings):
        return compute_features_stage(out_dir, ids, settings, runner)
    return _size_checked(out_dir, ids, settings)


def _size_checked(out_dir, ids, settings):
    root = store.open_root(Path(out_dir) / "store.zarr")
    ok, skipped = [], []
    for image_id in ids:
        try:
            checked_shape(root, image_id, settings)
            ok.append(image_id)
        except (features.ImageTooSmallError, ValueError) as exc:
            _skip(skipped, image_id, exc)
    return ok, skipped


def select_k(inputs, out_dir, settings, runner, k_values, n_seeds: int = 3) -> dict:
    """Ingest and features as in :func:`run`, then error and stability for each k on one pixel sample.

    Writes ``select_k.json`` and ``select_k.png`` into ``out_dir``.
    """
    with output_lock(out_dir):
        return _select_k(inputs, Path(out_dir), settings, runner, k_values, n_seeds)


def _select_k(inputs, out_dir: Path, settings, runner, k_values, n_seeds: int) -> dict:
    from . import selectk

    settings = runner.resolve(settings)
    ids, skipped = ingest(io.find_images(inputs), out_dir, settings, runner)
    settings, _ = at_one_scale(out_dir, ids, settings)
    ids, more = prepare_features(out_dir, ids, settings, runner)
    if not ids:
        raise ValueError("no image left to choose k on: every input was skipped")
    # one bar: the images sampled, then each k's resampled fits
    k_values = list(k_values)
    with runner.progress("select-k", len(ids) + len(k_values) * n_seeds, "step", counted=len(ids),
                         note="sampling pixels", after=f"k={k_values[0]}" if k_values else "") as bar:
        X, _, _, void_below, X_void = void_split(FeatureSources(out_dir, ids, settings), settings,
                                                 lambda objs: runner.compute(objs), runner.batch_images)
        result = selectk.scan(X, k_values, settings, n_seeds,
                              progress=None if bar is None else lambda k, seed: bar.step(f"k={k}: {seed + 1} of {n_seeds} fits"))
    result.update({"images": len(ids), "sample_pixels": int(X.shape[0] + X_void.shape[0]), "skipped": skipped + more})
    if void_below is not None:
        # the scan's k counts the phases NMF fits on the pixels that are no void; a run's n_components
        # counts the void phase too, as n_components: auto does
        result["void"] = {"below": round(float(void_below), 6),
                          "sample_share": round(len(X_void) / max(len(X) + len(X_void), 1), 6)}
        result["pixel_phases_recommended"] = result["recommended"]
        result["recommended"] += 1
    io.atomic_write_text(out_dir / "select_k.json", json.dumps(result, indent=2))
    selectk.plot(result, out_dir / "select_k.png")
    return result
