"""bigseg: unsupervised phase segmentation of SEM micrographs of metals with NMF.

Stages, ground floor first: :mod:`bigseg.io` (read, crop), :mod:`bigseg.preprocess`,
:mod:`bigseg.features`, :mod:`bigseg.model` (scaling + NMF), :mod:`bigseg.segment`,
:mod:`bigseg.evaluate`; :mod:`bigseg.pipeline` runs them in order over one Zarr store.
"""

__version__ = "0.1.0"
