"""Exact non-negative least squares with a fixed, small H, for millions of pixels at once.

For each pixel ``v`` (a row of V) we solve::

    min_w  0.5 * ||v - w H||^2 + l1 * sum(w) + 0.5 * l2 * ||w||^2   subject to  w >= 0

The optimum's support S is one of the 2^k subsets of components, and on S the
solution is the unconstrained one, ``w_S = (G_SS + l2 I)^-1 (c_S - l1)`` with
``G = H H^T`` and ``c = H v``. Every feasible subset solution is a feasible
point, so the feasible one with the lowest objective is the exact optimum.
For k <= 8 that is at most 255 tiny matrix products per pixel block, all
vectorised, with no iterations and no tolerance.

Most pixels share their support with a neighbour or with their own previous
solution, and a support is optimal exactly when the KKT conditions hold on it,
so a compiled kernel (numba) checks that candidate first and enumerates only
where it fails: the same answer, several times faster. Without numba the
vectorised numpy path below gives it.

The coupled solve of ``segment.spatial_block`` (a pixel-wise solve, then
Jacobi sweeps that pull each pixel towards its neighbours' mean) has a
compiled kernel of its own, :func:`coupled_solve`, that computes ``H v`` once
and the neighbour mean inline: the numbers of the loop of :func:`solve` calls,
bit for bit, in half its time. Each kernel is compiled once per k (a tuple
of k zeros passes k as a type), so its loops unroll.
"""

from __future__ import annotations

import functools
import itertools
import os
import tempfile
import threading

import numpy as np

MAX_EXACT_K = 10
#: blocks at least this large try the active sets common on a probe first
STAGED_MIN_PIXELS = 8192
PROBE_PIXELS = 2048
CANDIDATES = 4


def subset_solvers(H: np.ndarray, l1: float = 0.0, l2: float = 0.0) -> np.ndarray:
    """For every non-empty subset S of components, the k x k matrix that maps
    ``c = H v - l1`` to the optimum on S (the inverse of ``G_SS`` embedded in
    S's rows and columns, zero elsewhere). Shape ``(2^k - 1, k, k)``."""
    H = np.asarray(H, dtype=np.float64)
    k = H.shape[0]
    if k > MAX_EXACT_K:
        raise ValueError(f"exact NNLS enumerates 2^k subsets; k={k} is above {MAX_EXACT_K}")
    G = H @ H.T + l2 * np.eye(k)
    out = []
    for size in range(1, k + 1):
        for S in itertools.combinations(range(k), size):
            idx = np.array(S)
            M = np.zeros((k, k))
            M[np.ix_(idx, idx)] = np.linalg.pinv(G[np.ix_(idx, idx)])
            out.append(M)
    return np.array(out)


@functools.lru_cache(maxsize=16)
def _cached_solvers(H_bytes: bytes, shape: tuple, l1: float, l2: float) -> np.ndarray:
    # shared by every later call with the same H and penalties, so never written to; left writeable all
    # the same, as a read-only array is another type to numba (another compilation of each kernel)
    return subset_solvers(np.frombuffer(H_bytes, np.float64).reshape(shape), l1, l2)


def _solvers_for(H: np.ndarray, l1: float, l2: float) -> np.ndarray:
    """:func:`subset_solvers`, remembered: one image's tiles (and a folder's images) share H, and its
    2^k - 1 pseudo-inverses cost about 1.5 ms a call."""
    H = np.ascontiguousarray(H, dtype=np.float64)
    return _cached_solvers(H.tobytes(), H.shape, float(l1), float(l2))


def solve(V: np.ndarray, H: np.ndarray, l1: float = 0.0, l2: float = 0.0, solvers=None,
          offset: np.ndarray | None = None, hint: np.ndarray | None = None,
          return_support: bool = False):
    """W >= 0 minimising the penalised least squares for each row of ``V`` (pixels x features).

    ``offset`` (pixels x k), when given, adds ``- w . offset`` to each pixel's
    objective: with ``l2 = mu`` and ``offset = mu * m`` the penalty becomes
    ``0.5 * mu * ||w - m||^2`` (up to a constant), which pulls w towards m.

    ``hint`` (one subset index per pixel, -1 for the empty set, as returned with
    ``return_support``) is tried first: where the hinted support satisfies the
    optimality (KKT) conditions the answer is final, and only the remaining
    pixels go through the full enumeration. The result is the same either way.

    Returns float32 ``(pixels, k)``, and the support index per pixel if asked.
    """
    H = np.asarray(H, dtype=np.float64)
    k = H.shape[0]
    if solvers is None:
        solvers = _solvers_for(H, l1, l2)
    Gm = H @ H.T + l2 * np.eye(k)
    kernel = _compiled()
    if kernel is not None and len(solvers):
        V = np.ascontiguousarray(V, dtype=np.float32)
        W = np.empty((V.shape[0], k))
        support = np.empty(V.shape[0], np.intp)
        hints = np.asarray(hint, np.intp) if hint is not None else np.full(V.shape[0], -2, np.intp)
        offset = np.zeros((0, k)) if offset is None else np.ascontiguousarray(offset, dtype=np.float64)
        kernel(V, np.ascontiguousarray(H), float(l1), offset, np.ascontiguousarray(solvers),
               np.ascontiguousarray(Gm), hints, W, support, (0.0,) * k)
    else:
        # float64 keeps the objective comparison between near-equal subsets exact
        C = np.asarray(V, dtype=np.float64) @ H.T - l1          # (n, k): H v - l1
        if offset is not None:
            C += offset
        W, support = _solve_numpy(C, Gm, solvers, hint)
    W = W.astype(np.float32)
    return (W, support) if return_support else W


def coupled_solve(V: np.ndarray, H: np.ndarray, rows: int, l1: float, l2: float, mu: float,
                  sweeps: int) -> np.ndarray | None:
    """The pixel-wise solve of ``V`` (``rows`` rows of pixels in raster order), then ``sweeps`` Jacobi
    sweeps pulling each pixel towards its neighbours' mean with strength ``mu``, in one compiled kernel.

    Equal, bit for bit, to the compiled :func:`solve` followed by ``sweeps`` calls of ``solve(...,
    l2 + mu, offset=mu * neighbour_mean, hint=support)`` (``segment._spatial_loop``, which runs
    without numba), in half the time on MetalDAM: ``H v`` computed once, the neighbour mean inline,
    no temporaries. Returns float32 ``(pixels, k)``, or None when numba is not installed.
    """
    kernel = compiled(_sweep_kernel)
    if kernel is None:
        return None
    H = np.ascontiguousarray(H, dtype=np.float64)
    k = H.shape[0]
    V = np.ascontiguousarray(V, dtype=np.float32)
    n = V.shape[0]
    if rows <= 0 or n % rows:
        raise ValueError(f"{n} pixels are not {rows} whole rows")
    grid, spare = np.empty((n, k), np.float32), np.empty((n, k), np.float32)
    support = np.empty(n, np.intp)
    return kernel(V, H, float(l1), _solvers_for(H, l1, l2),
                  H @ H.T + l2 * np.eye(k), _solvers_for(H, l1, l2 + mu),
                  H @ H.T + (l2 + mu) * np.eye(k), float(mu), int(sweeps), int(rows), grid, spare, support,
                  (0.0,) * k)


def _solve_numpy(C, Gm, solvers, hint):
    n = C.shape[0]
    W = np.zeros_like(C)
    support = np.full(n, -1, np.intp)
    rest = np.arange(n)
    if hint is not None:
        rest = _try_hint(C, Gm, solvers, np.asarray(hint), W, support)
    elif n >= STAGED_MIN_PIXELS and len(solvers) > 7:
        # most pixels of a micrograph share a few active sets: find them on a probe,
        # accept them where the KKT conditions hold, enumerate only the rest
        probe = C[:: max(1, n // PROBE_PIXELS)]
        _, probe_support = _enumerate(probe, solvers)
        values, counts = np.unique(probe_support, return_counts=True)
        for j in values[np.argsort(-counts, kind="stable")][:CANDIDATES]:
            rest = rest[_accept(C[rest], Gm, solvers, int(j), W, support, rest)]
            if rest.size == 0:
                break
    if rest.size:
        Wr, sr = _enumerate(C[rest], solvers)
        W[rest], support[rest] = Wr, sr
    return W, support


def _enumerate(C: np.ndarray, solvers: np.ndarray):
    """Best feasible subset solution for each row of C (the exhaustive search)."""
    best_obj = np.zeros(C.shape[0])                          # w = 0: objective 0 (up to a constant)
    W = np.zeros_like(C)
    support = np.full(C.shape[0], -1, np.intp)
    for j, M in enumerate(solvers):
        ws = C @ M                                           # zero outside the subset
        # objective of the unconstrained optimum on S: -0.5 * w_S . (c_S - l1)
        obj = -0.5 * np.einsum("ij,ij->i", ws, C)
        better = (obj < best_obj) & np.all(ws >= 0, axis=1)
        best_obj = np.where(better, obj, best_obj)
        W = np.where(better[:, None], ws, W)
        support = np.where(better, j, support)
    return W, support


def _accept(c, Gm, solvers, j: int, W, support, rows) -> np.ndarray:
    """Where support ``j`` is optimal for the rows ``c`` (= C[rows]), store it; return the mask of the others."""
    ws = np.zeros_like(c) if j < 0 else c @ solvers[j]
    grad = ws @ Gm - c                                       # zero on the support at its optimum
    tol = 1e-9 * (1.0 + np.abs(c).max(axis=1))
    ok = np.all(ws >= 0, axis=1) & np.all(grad >= -tol[:, None], axis=1)
    W[rows[ok]] = ws[ok]
    support[rows[ok]] = j
    return ~ok


def _try_hint(C, Gm, solvers, hint, W, support) -> np.ndarray:
    """Accept hinted supports that meet the KKT conditions; return the other pixels' indices."""
    failed = []
    order = np.argsort(hint, kind="stable")
    bounds = np.flatnonzero(np.diff(hint[order])) + 1
    for sel in np.split(order, bounds):
        if sel.size:
            failed.append(sel[_accept(C[sel], Gm, solvers, int(hint[sel[0]]), W, support, sel)])
    return np.concatenate(failed) if failed else np.empty(0, np.intp)


# --- compiled kernel ----------------------------------------------------------------

_KERNEL = []
# dask runs blocks on threads: one compilation, and one borrowing of numba's global CACHE_DIR at a time
_KERNEL_LOCK = threading.Lock()


def cache_dir() -> str | None:
    """The folder the compiled kernel is cached in, or None when none can be written.

    Numba's default cache is the module's ``__pycache__``: inside an installed
    package that leaves files pip does not remove, and the leftover folder then
    shadows a later editable install as an empty namespace package. So the
    cache goes to ``NUMBA_CACHE_DIR`` when the user set one, else to
    ``$XDG_CACHE_HOME/bigseg/numba`` or ``~/.cache/bigseg/numba``.
    """
    from numba.core import config

    path = config.CACHE_DIR                 # NUMBA_CACHE_DIR (or .numba_config.yaml), read at numba import
    if not path:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        try:
            # the XDG spec says to ignore a relative XDG_CACHE_HOME
            base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
        except RuntimeError:                # no HOME and no password entry
            return None
        if not os.path.isabs(base):         # expanduser left "~" as is
            return None
        path = os.path.join(base, "bigseg", "numba")
    try:
        # the check numba itself makes before it uses a folder; failing it, numba would fall back to __pycache__
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return None
    return path


def _compiled():
    """The numba kernel, compiled on first use (cached on disk); None when numba is not installed."""
    with _KERNEL_LOCK:
        if not _KERNEL:
            try:
                import numba
            except ImportError:
                _KERNEL.append(None)
            else:
                # the per-pixel solve the kernels call, a global of this module: inlined into each
                # (numba IR inlining; a call cost 8 % of a sweep), so it needs no cache of its own
                globals()["_pixel_jit"] = numba.njit(inline="always", nogil=True)(_pixel)
                _KERNEL.append(_decorate(numba, _kernel))
    return _KERNEL[0]


#: other compiled kernels (the fused sweeps, segment's resample + argmax), by function, made on first use
_KERNELS: dict = {}


def compiled(func):
    """``func`` (a module-level function numba can compile) under numba.njit, cached on disk as the
    solve kernel is; None when numba is not installed (or ``_KERNEL`` says so, as the tests arrange)."""
    if _compiled() is None:
        return None
    with _KERNEL_LOCK:
        if func not in _KERNELS:
            import numba

            _KERNELS[func] = _decorate(numba, func)
    return _KERNELS[func]


def _decorate(numba, func=None):
    """``func`` (default ``_kernel``) under numba.njit, with its disk cache in :func:`cache_dir` or, if that
    is unwritable, none."""
    from numba.core import config

    func = _kernel if func is None else func
    folder = cache_dir()
    if folder is None:
        # better to compile in every process than to write into the package
        return numba.njit(cache=False, nogil=True)(func)
    # the dispatcher fixes its cache folder from config.CACHE_DIR when it is made, here; restored after, so
    # other libraries' numba caches stay where their users expect them
    saved = config.CACHE_DIR
    config.CACHE_DIR = folder
    try:
        kernel = numba.njit(cache=True, nogil=True)(func)
    finally:
        config.CACHE_DIR = saved
    cache = getattr(kernel, "_cache", None)
    where = getattr(cache, "cache_path", None)
    if where is not None and os.path.commonpath([os.path.abspath(where), os.path.abspath(folder)]) != \
            os.path.abspath(folder):
        # numba found the folder unwritable after all and fell back to __pycache__
        return numba.njit(cache=False, nogil=True)(func)
    return kernel


def _kernel(V, H, l1, offset, solvers, Gm, hints, W, support, kt):  # pragma: no cover - compiled by numba
    """Per pixel: ``c = H v - l1 (+ offset)`` in float64, then accept the hinted support (or, with
    hint -2, the previous pixel's) where the KKT conditions hold, else enumerate every support
    exactly as ``_enumerate`` does. ``kt`` is a tuple of k zeros: its length, part of its type, makes k a
    constant of each compiled version, whose fully unrolled loops ran the sweeps 1.6x faster."""
    n, f = V.shape
    k = len(kt)
    with_offset = offset.shape[0] == n
    c = np.zeros(k)
    ws = np.zeros(k)
    best = np.zeros(k)
    prev = -1
    for i in range(n):
        for a in range(k):
            acc = 0.0
            for b in range(f):
                acc += np.float64(V[i, b]) * H[a, b]
            c[a] = acc - l1 + (offset[i, a] if with_offset else 0.0)
        j = _pixel_jit(c, hints[i] if hints[i] != -2 else prev, solvers, Gm, ws, best, kt)
        for a in range(k):
            W[i, a] = ws[a]
        support[i] = j
        prev = j


#: ``_pixel`` compiled; set by :func:`_compiled` before any kernel that calls it is compiled
_pixel_jit = None


def _pixel(c, j, solvers, Gm, ws, best, kt):  # pragma: no cover - compiled by numba
    """The exact solve of one pixel with ``c = H v - l1 (+ offset)``: support ``j`` (-1: none) where it
    meets the KKT conditions, else the best feasible support of all (``_enumerate``). Leaves the
    solution in ``ws`` (``best`` is scratch) and returns its support. ``len(kt)`` is k."""
    k = len(kt)
    m = solvers.shape[0]
    scale = 0.0
    for a in range(k):
        scale = max(scale, abs(c[a]))
    tol = 1e-9 * (1.0 + scale)
    ok = True
    for a in range(k):
        acc = 0.0
        if j >= 0:
            for b in range(k):
                acc += c[b] * solvers[j, b, a]
        ws[a] = acc
        if acc < 0.0:
            ok = False
    if ok:
        for a in range(k):
            g = -c[a]
            for b in range(k):
                g += ws[b] * Gm[b, a]
            if g < -tol:
                ok = False
                break
    if not ok:
        best_obj = 0.0
        j = -1
        for a in range(k):
            best[a] = 0.0
        for s in range(m):
            feasible = True
            dot = 0.0
            for a in range(k):
                acc = 0.0
                for b in range(k):
                    acc += c[b] * solvers[s, b, a]
                ws[a] = acc
                dot += acc * c[a]
                if acc < 0.0:
                    feasible = False
                    break                    # an infeasible support never wins: the rest is not needed
            obj = -0.5 * dot
            if feasible and obj < best_obj:
                best_obj = obj
                j = s
                for a in range(k):
                    best[a] = ws[a]
        for a in range(k):
            ws[a] = best[a]
    return j


def _sweep_kernel(V, H, l1, solvers0, Gm0, solvers, Gm, mu, sweeps, rows, grid, spare, support,
                  kt):  # pragma: no cover - compiled by numba
    """The pixel-wise solve, then ``sweeps`` Jacobi sweeps of the coupled one, in one pass each, with the
    neighbour mean computed inline: the numbers of ``segment.spatial_block``'s numpy loop (``solve``, then
    ``neighbour_mean`` and ``solve`` with ``offset = mu * mean`` and the last supports as hints), bit for bit.

    ``V`` holds ``rows`` rows of pixels in raster order; ``solvers0``/``Gm0`` are the pixel-wise
    problem's, ``solvers``/``Gm`` the coupled one's (``l2 + mu``). ``grid`` and ``spare`` (pixels x k,
    float32) are the two Jacobi buffers; returns the one holding the result. ``len(kt)`` is k (``_kernel``).
    """
    n, f = V.shape
    k = len(kt)
    cols = n // rows
    C0 = np.empty((n, k))                    # H v - l1: the same in every sweep
    c = np.zeros(k)
    ws = np.zeros(k)
    best = np.zeros(k)
    prev = -1
    for i in range(n):
        for a in range(k):
            acc = 0.0
            for b in range(f):
                acc += np.float64(V[i, b]) * H[a, b]
            C0[i, a] = acc - l1
            c[a] = C0[i, a] + 0.0
        j = _pixel_jit(c, prev, solvers0, Gm0, ws, best, kt)
        for a in range(k):
            grid[i, a] = np.float32(ws[a])
        support[i] = j
        prev = j
    quarter = np.float32(0.25)
    for _ in range(sweeps):
        for y in range(rows):
            up = (y - 1 if y > 0 else y) * cols
            down = (y + 1 if y < rows - 1 else y) * cols
            for x in range(cols):
                i = y * cols + x
                left = i - 1 if x > 0 else i
                right = i + 1 if x < cols - 1 else i
                for a in range(k):
                    # float32, summed in neighbour_mean's order: above, below, left, right
                    mean = quarter * (((grid[up + x, a] + grid[down + x, a]) + grid[left, a]) + grid[right, a])
                    c[a] = C0[i, a] + mu * np.float64(mean)
                j = _pixel_jit(c, support[i], solvers, Gm, ws, best, kt)
                for a in range(k):
                    spare[i, a] = np.float32(ws[a])
                support[i] = j
        grid, spare = spare, grid
    return grid
