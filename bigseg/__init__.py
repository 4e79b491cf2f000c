"""bigseg: unsupervised phase segmentation of SEM micrographs of metals with NMF.

The public face is :class:`PhaseSegmenter` (fit, transform, predict, save/load,
scikit-learn conventions), :class:`Settings` (checked, read-only settings) and
:func:`load_settings` (a YAML settings file as a :class:`Settings`). All are
imported on first use, so ``import bigseg`` stays light.

Stages, ground floor first: :mod:`bigseg.io` (read, crop), :mod:`bigseg.preprocess`,
:mod:`bigseg.features`, :mod:`bigseg.model` (scaling + NMF), :mod:`bigseg.segment`,
:mod:`bigseg.estimator` (one image, in memory), :mod:`bigseg.evaluate`;
:mod:`bigseg.pipeline` runs them in order over one Zarr store.
"""

__version__ = "0.1.0"

__all__ = ["PhaseSegmenter", "Settings", "load_settings", "__version__"]

# public name -> (submodule, attribute); importing numpy, scipy or dask only when one is asked for
_LAZY = {"PhaseSegmenter": ("estimator", "PhaseSegmenter"), "Settings": ("config", "Settings"),
         "load_settings": ("config", "load_settings")}


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
