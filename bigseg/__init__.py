"""bigseg: unsupervised phase segmentation of SEM micrographs of metals with NMF.

The public face is :class:`PhaseSegmenter` (fit, transform, predict, save/load,
scikit-learn conventions), :class:`Settings` (checked, read-only settings),
:func:`load_settings` (a YAML settings file as a :class:`Settings`) and
:func:`fractions_table` / :func:`fractions_summary` (a run's phase fractions, per image and
across images with a 95 % interval, as pandas DataFrames). All are
imported on first use, so ``import bigseg`` stays light.

Stages, ground floor first: :mod:`bigseg.io` (read, crop), :mod:`bigseg.preprocess`,
:mod:`bigseg.features`, :mod:`bigseg.model` (scaling + NMF), :mod:`bigseg.segment`,
:mod:`bigseg.estimator` (one image, in memory), :mod:`bigseg.evaluate`;
:mod:`bigseg.pipeline` runs them in order over one Zarr store.
"""

__version__ = "0.1.0"

__all__ = ["PhaseSegmenter", "Settings", "load_settings", "fractions_table", "fractions_summary", "__version__"]

# public name -> (submodule, attribute); importing numpy, scipy or dask only when one is asked for
_LAZY = {"PhaseSegmenter": ("estimator", "PhaseSegmenter"), "Settings": ("config", "Settings"),
         "load_settings": ("config", "load_settings"), "fractions_table": ("fractions", "fractions_table"),
         "fractions_summary": ("fractions", "fractions_summary")}


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        module, attr = _LAZY[name]
        value = getattr(import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value          # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_LAZY))
