"""The ``bigseg`` command line."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import warnings
from pathlib import Path

import click

from . import __version__
from .config import MODEL_KEYS, ConfigError, load, validate

log = logging.getLogger("bigseg")

#: exit status when the run finished but some inputs were skipped
EXIT_SKIPPED = 3


class ConfigFile(click.Path):
    """A settings file, or the name of one shipped with bigseg (``default``, ``metaldam``)."""

    name = "config"

    def __init__(self):
        super().__init__(exists=True, dir_okay=False)

    def convert(self, value, param, ctx):
        if not Path(value).exists():
            from importlib.resources import files

            shipped = files("bigseg.configs") / f"{Path(value).stem}.yaml"
            if Path(value).parent == Path(".") and shipped.is_file():
                return str(shipped)
        return super().convert(value, param, ctx)


CONFIG = ConfigFile()

#: what every command that takes CONFIG says of it (click gives arguments no help of their own)
CONFIG_HELP = """
    CONFIG is a YAML settings file, or the name of one shipped with bigseg
    (default, metaldam); without it, the defaults ('bigseg config' prints
    them). --set overrides single keys of it."""


def _config_argument(f):
    """The optional CONFIG argument, explained at the end of the command's help."""
    f.__doc__ = (f.__doc__ or "").rstrip() + "\n" + CONFIG_HELP
    return click.argument("config", required=False, type=CONFIG)(f)


def _examples(*lines: str) -> str:
    """An epilog of example command lines, kept as written (click's \\b: no rewrapping)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


class _AboveBars(logging.StreamHandler):
    """Writes each log line above any progress bar on the same stream, not through it."""

    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


class _LibraryLines(logging.Handler):
    """A reader library's own log lines (tifffile's about each damaged tag) become bigseg debug lines: what
    the user sees of a bad file is bigseg's one line naming it and why it was skipped."""

    def emit(self, record):
        log.debug("%s: %s", record.name, " ".join(record.getMessage().split())[:500])


#: libraries whose log lines would reach the terminal raw (Python's last-resort handler prints warnings)
QUIETED_LOGGERS = ("tifffile", "imagecodecs")


def _setup_logging(quiet: bool) -> None:
    """``bigseg:`` lines on stderr; ``--quiet`` leaves only errors. Python warnings go the same way, and the
    reader libraries' own lines only as debug lines."""
    handler = _AboveBars(sys.stderr)
    handler.setFormatter(logging.Formatter("bigseg: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.ERROR if quiet else logging.INFO)
    log.propagate = False
    for name in QUIETED_LOGGERS:
        library = logging.getLogger(name)
        library.handlers[:] = [_LibraryLines()]
        library.propagate = False
    ctx = click.get_current_context(silent=True)
    if ctx is not None:     # undone when the command ends, so a caller in the same process keeps its own
        ctx.with_resource(_warnings_to_log())


@contextlib.contextmanager
def _warnings_to_log():
    """Python warnings (scikit-learn's ConvergenceWarning, ...) as one ``bigseg:`` warning line each, once.

    Through the logger, so ``--quiet`` silences them; Python's own output would
    be two lines (file, line and source) and come again from every call site.
    """
    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split()) or category.__name__
        if (category, text) not in seen:
            seen.add((category, text))
            log.warning("%s (%s)", text, category.__name__)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def _settings(config, sets, n_components=None, base=None):
    """Validated settings: defaults (or ``base``), then the CONFIG file, then -k, then --set.

    With ``base`` (a model's settings) only keys the user gave explicitly replace it,
    so the model's feature settings hold unless the user asks for others.
    """
    try:
        overrides = {"n_components": n_components} if n_components else {}
        if base is None:
            return load(config, overrides, sets)
        merged = dict(base)
        if config or sets or overrides:
            user = load(config, overrides, sets)
            merged.update({k: user[k] for k in _explicit_keys(config, sets, overrides)})
        return validate(merged)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _explicit_keys(config, sets, overrides):
    from .config import read_config_file

    keys = set(overrides)
    if config:
        keys |= set(read_config_file(config))
    keys |= {s.split("=", 1)[0].strip() for s in sets}
    return keys


@contextlib.contextmanager
def _runner(workers, scheduler, quiet, settings):
    """The Runner for --workers / --scheduler, else the config's ``cluster`` section, else threads."""
    from .cluster import runner

    with contextlib.ExitStack() as stack:
        yield _guarded(lambda: stack.enter_context(runner(workers, scheduler, quiet, settings["cluster"])))


@contextlib.contextmanager
def _locked(out_dir):
    """The output folder's lock, taken before any worker starts or SLURM job is submitted."""
    from .lock import output_lock

    with contextlib.ExitStack() as stack:
        _guarded(lambda: stack.enter_context(output_lock(out_dir)))
        yield


def _cluster_options(f):
    f = click.option("--scheduler", metavar="ADDRESS",
                     help="address of a running dask scheduler (tcp://HOST:PORT); overrides the cluster setting")(f)
    f = click.option("--workers", type=click.IntRange(1), metavar="N",
                     help="start a local Dask cluster of N worker processes (default: threads in this process)")(f)
    f = click.option("--quiet", is_flag=True,
                     help="print only the results and errors: no progress bars, no info or warning lines")(f)
    return f


#: --set's help: one text for every command that takes it
SET_HELP = "override one setting, e.g. --set max_iter=800 (repeatable; values are YAML; 'bigseg config' lists keys)"


def _set_option(f):
    return click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(f)


def _config_options(f):
    f = _set_option(f)
    f = click.option("-k", "--n-components", type=click.IntRange(1), metavar="K",
                     help="number of phases (NMF components); the n_components setting")(f)
    return f


def _input_option(f):
    return click.option("--input", "inputs", multiple=True, required=True, metavar="PATH",
                        help="image file, folder or quoted glob such as 'scans/*.tif' (repeatable)")(f)


def _finish(summary: dict) -> None:
    skipped = summary.get("skipped", [])
    now = summary.get("segmented_this_run")
    click.echo(f"{summary['n_images']} image(s) done" + (f" ({now} segmented by this run)" if now is not None else "")
               + (f"; skipped {len(skipped)}: " + ", ".join(s["id"] for s in skipped) if skipped else ""))
    if skipped:
        for s in skipped:
            click.echo(f"  skipped [{s['stage']}] {s['error']}", err=True)
        sys.exit(EXIT_SKIPPED)


@click.group(epilog=_examples("bigseg demo demo-out", "bigseg run --input 'scans/*.tif' --out results -k 4",
                               "bigseg COMMAND --help"))
@click.version_option(__version__, prog_name="bigseg")
def main():
    """Unsupervised phase segmentation of SEM micrographs with NMF, out of core."""


@main.command(epilog=_examples(
    "bigseg run --input 'scans/*.tif' --out results -k 4",
    "bigseg run metaldam --input scans/ --out results --workers 4",
    "bigseg run my.yaml --input a.tif --input b.png --out results --set resize=native"))
@_config_argument
@_input_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="output folder: labels, tables, model and store (a later run into it resumes)")
@_config_options
@_cluster_options
def run(config, inputs, out_dir, n_components, sets, workers, scheduler, quiet):
    """Every stage: ingest, features, fit, segment, exports."""
    from .pipeline import run as run_pipeline

    _setup_logging(quiet)
    settings = _settings(config, sets, n_components)
    with _locked(out_dir), _runner(workers, scheduler, quiet, settings) as r:
        summary = _guarded(lambda: run_pipeline(list(inputs), out_dir, settings, r))
    _finish(summary)


@main.command(epilog=_examples(
    "bigseg segment results/model --input 'new/*.tif' --out results-new",
    "bigseg segment results/model --input new/ --out results-new --set spatial_weight=0 --workers 4"))
@click.argument("model_dir", metavar="MODEL", type=click.Path(exists=True, file_okay=False))
@click.argument("config", required=False, type=CONFIG)
@_input_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="output folder for the new images' labels, tables and store")
@_set_option
@_cluster_options
def segment(model_dir, config, inputs, out_dir, sets, workers, scheduler, quiet):
    """Segment new images with a saved MODEL (no refit).

    MODEL is the model folder of an earlier run (OUT/model), and its settings
    hold. CONFIG, a YAML settings file or the name of one shipped with bigseg
    (default, metaldam), and --set replace only the keys they name; the
    feature settings must stay the model's.
    """
    from .model import Model, ModelError
    from .pipeline import run as run_pipeline

    _setup_logging(quiet)
    try:
        model = Model.load(model_dir)
    except ModelError as exc:
        raise click.UsageError(str(exc)) from None
    # the model's own settings (features, spatial coupling) unless the user overrides them
    base = validate({k: v for k, v in model.settings.items() if k in MODEL_KEYS})
    settings = _settings(config, sets, None, base=base)
    try:
        model.check_settings(settings)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    with _locked(out_dir), _runner(workers, scheduler, quiet, settings) as r:
        summary = _guarded(lambda: run_pipeline(list(inputs), out_dir, settings, r, model=model))
    _finish(summary)


@main.command(epilog=_examples("bigseg ingest --input scans/ --out results",
                               "bigseg features --out results && bigseg fit --out results -k 4"))
@_config_argument
@_input_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="output folder; the images go into OUT/store.zarr")
@_set_option
@_cluster_options
def ingest(config, inputs, out_dir, sets, workers, scheduler, quiet):
    """Read, grey and crop images into OUT/store.zarr."""
    from .io import find_images
    from .pipeline import ingest as ingest_stage

    _setup_logging(quiet)
    settings = _settings(config, sets)
    with _locked(out_dir), _runner(workers, scheduler, quiet, settings) as r:
        ids, skipped = _guarded(lambda: ingest_stage(find_images(list(inputs)), out_dir, settings, r))
    _finish({"n_images": len(ids), "skipped": skipped})


def _stored_ids(out_dir):
    from . import store

    ids = [i for i in store.image_ids(store.open_root(Path(out_dir) / "store.zarr", mode="r"))
           if store.is_done(out_dir, "ingest", i)]
    if not ids:
        raise click.UsageError(f"{out_dir}: no ingested image; run 'bigseg ingest' first")
    return ids


#: --out of the commands that work on what 'bigseg ingest' stored
STORED_OUT_HELP = "output folder of an earlier 'bigseg ingest' (or run)"


@main.command(epilog=_examples("bigseg features --out results", "bigseg features my.yaml --out results --workers 4"))
@_config_argument
@click.option("--out", "out_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help=STORED_OUT_HELP)
@_set_option
@_cluster_options
def features(config, out_dir, sets, workers, scheduler, quiet):
    """Compute and store the features of every ingested image in OUT."""
    from .pipeline import compute_features_stage

    _setup_logging(quiet)
    settings = _settings(config, sets)
    with _locked(out_dir), _runner(workers, scheduler, quiet, settings) as r:
        ids, skipped = _guarded(lambda: compute_features_stage(out_dir, _stored_ids(out_dir), settings, r))
    _finish({"n_images": len(ids), "skipped": skipped})


@main.command(epilog=_examples("bigseg fit --out results -k 4", "bigseg fit --out results -k 4 --set max_iter=800"))
@_config_argument
@click.option("--out", "out_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help=STORED_OUT_HELP + "; the model goes into OUT/model")
@_config_options
@_cluster_options
def fit(config, out_dir, n_components, sets, workers, scheduler, quiet):
    """Fit the scaling and NMF on the images in OUT; save OUT/model."""
    from .pipeline import fit_stage

    _setup_logging(quiet)
    settings = _settings(config, sets, n_components)
    with _locked(out_dir), _runner(workers, scheduler, quiet, settings) as r:
        model = _guarded(lambda: fit_stage(out_dir, _stored_ids(out_dir), settings, r))
    # the fit's own warning, here where max_iter can be raised (the map warnings need a segmentation)
    from .diagnose import failure_modes

    for warning in failure_modes([], {}, model.report):
        if warning["kind"] == "not_converged":
            log.warning("%s; %s", warning["message"], warning["suggestion"])
    click.echo(json.dumps(model.report, indent=2, default=str))


@main.command(epilog=_examples("bigseg rename results 0=matrix 1=austenite 2=pores",
                               "bigseg rename results 3='martensite islands'",
                               "bigseg rename results --constituents 2=spheroidite 3=network"))
@click.argument("out_dir", metavar="OUT", type=click.Path(exists=True, file_okay=False))
@click.argument("assignments", metavar="INDEX=NAME", nargs=-1, required=True)
@click.option("--constituents", is_flag=True,
              help="name the microconstituents (n_constituents) instead of the phases")
def rename(out_dir, assignments, constituents):
    """Name the phases of the run in OUT; every output that shows names follows.

    OUT is the output folder of a run (it holds OUT/model). Each INDEX=NAME
    names one phase by its label (0 is the darkest phase; summary.json and
    the legends list them all); phases not named keep their names.
    The model, summary.json, the phase_fractions.csv header, the fingerprint
    charts and the legends of overlay/ and activations/ are rewritten; no
    label changes, nothing is recomputed. With --constituents, INDEX is a
    microconstituent's label (constituents/, constituent_fractions.csv).
    """
    from .rename import rename as rename_phases, rename_constituents

    names = _guarded(lambda: (rename_constituents if constituents else rename_phases)(out_dir, assignments))
    for i, name in enumerate(names):
        click.echo(f"{i}: {name}")


@main.command(epilog=_examples("bigseg evaluate results/labels --labels masks/",
                               "bigseg evaluate results/labels --labels masks/ --n-classes 5 --json scores.json"))
@click.argument("pred_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--labels", "label_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="folder of class-index masks with the same file stems")
@click.option("--n-classes", type=click.IntRange(1), help="number of classes (default: from the masks)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="also write the scores here")
def evaluate(pred_dir, label_dir, n_classes, json_out):
    """Score label maps in PRED_DIR against masks (Hungarian match over the collection).

    PRED_DIR is a folder of label PNGs, such as OUT/labels of a run (the
    run folder OUT itself means its labels/). Predictions and masks must be
    maps of class indices (one channel, at most 64 values) of the same
    pixels: colour pictures, micrographs and transposed maps are refused.
    """
    from .evaluate import evaluate_dirs, format_report
    from .io import atomic_write_text

    res = _guarded(lambda: evaluate_dirs(pred_dir, label_dir, n_classes))
    click.echo(format_report(res))
    if json_out:
        try:
            atomic_write_text(json_out, json.dumps(res, indent=2))
        except OSError as exc:     # a folder not writable, a full disk: the path the user gave, not a temporary one
            raise click.ClickException(f"--json {json_out}: cannot write there ({exc.strerror or exc})") from None


@main.command(epilog=_examples("bigseg compare --input images/ --labels masks/ --out comparison -k 5",
                               "bigseg compare metaldam --input images/ --labels masks/ --out comparison"))
@_config_argument
@_input_option
@click.option("--labels", "label_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="folder of class-index masks with the same file stems")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="output folder: bigseg's run, each baseline's labels, comparison.md and comparison.json")
@click.option("--n-classes", type=click.IntRange(1), help="number of classes (default: from the masks)")
@_config_options
@_cluster_options
def compare(config, inputs, label_dir, out_dir, n_classes, n_components, sets, workers, scheduler, quiet):
    """Score bigseg, the plain NMF recipe, k-means and multi-Otsu on the same images; print one table."""
    from .compare import compare as run_compare

    _setup_logging(quiet)
    settings = _settings(config, sets, n_components)
    with _runner(workers, scheduler, quiet, settings) as r:
        out = _guarded(lambda: run_compare(list(inputs), label_dir, out_dir, settings, r, n_classes))
    click.echo(out["table"])
    click.echo(f"(also in {Path(out_dir) / 'comparison.md'} and comparison.json)")


@main.command("select-k", epilog=_examples("bigseg select-k --input scans/ --out k-scan",
                                           "bigseg select-k --input scans/ --out k-scan --k-min 3 --k-max 6 --seeds 5"))
@_config_argument
@_input_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="output folder: select_k.json, select_k.png and the ingested store (a run into it reuses it)")
@click.option("--k-min", default=2, show_default=True, type=click.IntRange(1), help="smallest k to try")
@click.option("--k-max", type=click.IntRange(1, 10), help="largest k [default: 8, or the feature count if smaller]")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(2), help="resampled fits per k")
@_set_option
@_cluster_options
def select_k(config, inputs, out_dir, k_min, k_max, seeds, sets, workers, scheduler, quiet):
    """Reconstruction error and stability for a range of k; a plot and a recommended k."""
    from .pipeline import select_k as run_select_k

    _setup_logging(quiet)
    settings = _settings(config, sets)
    from .features import feature_names

    n_features = len(feature_names(settings))
    k_max = min(8, n_features) if k_max is None else k_max
    if k_max < k_min:
        raise click.UsageError(f"--k-max ({k_max}) is below --k-min ({k_min})")
    if k_max > n_features:
        raise click.UsageError(f"--k-max ({k_max}) is above the {n_features} features the settings compute; "
                               f"NMF finds at most one component per feature")
    with _locked(out_dir), _runner(workers, scheduler, quiet, settings) as r:
        res = _guarded(lambda: run_select_k(list(inputs), out_dir, settings, r, range(k_min, k_max + 1), seeds))
    click.echo("   k   error   stability")
    for row in res["results"]:
        click.echo(f"{row['k']:4d}  {row['error']:.4f}  {row['stability']:.3f}")
    void = res.get("void")
    if void:
        click.echo(f"a void phase: {void['sample_share']:.2%} of the sampled pixels form a dark mode before CLAHE; "
                   f"k above counts the other phases")
    click.echo(f"recommended k = {res['recommended']} (largest k below the feature count with stability >= "
               f"{res['stable_threshold']}" + (", plus the void phase" if void else "") + "); "
               f"plot in {Path(out_dir) / 'select_k.png'}")


@main.command(epilog=_examples("bigseg demo demo-out", "bigseg demo demo-out --n-images 4 --seed 1 --quiet"))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--n-images", default=8, show_default=True, type=click.IntRange(2),
              help="number of synthetic micrographs to make")
@click.option("--seed", default=0, show_default=True, help="random seed of the synthetic micrographs")
@_cluster_options
def demo(out_dir, n_images, seed, workers, scheduler, quiet):
    """Generate synthetic SEM micrographs with masks, run everything, print the evaluation.

    OUT_DIR gets the images and masks (OUT_DIR/demo_data) and the run
    (OUT_DIR/run).
    """
    from .demo import CLASS_NAMES, make_dataset
    from .evaluate import evaluate_dirs, format_report
    from .pipeline import run as run_pipeline

    _setup_logging(quiet)
    out = Path(out_dir)
    img_dir, lab_dir = make_dataset(out / "demo_data", n_images, seed)
    # the shipped defaults, so the demo shows what a user gets; k is the data's own fact, and tiles
    # smaller than an image make the tiled path (halos, stitched labels) run as on a montage
    settings = load(None, {"n_components": len(CLASS_NAMES), "chunk_size": 192})
    with _runner(workers, scheduler, quiet, settings) as r:
        summary = _guarded(lambda: run_pipeline([img_dir], out / "run", settings, r))
    res = evaluate_dirs(out / "run" / "labels", lab_dir, len(CLASS_NAMES), CLASS_NAMES)
    click.echo(f"demo: {summary['n_images']} synthetic micrographs in {img_dir}; outputs in {out / 'run'}")
    click.echo(format_report(res))
    _finish(summary)


@main.command("config", epilog=_examples("bigseg config > my.yaml", "bigseg config my.yaml",
                                         "bigseg config metaldam --set n_components=4"))
@_config_argument
@_config_options
def config_command(config, n_components, sets):
    """Print the settings: the defaults, or those of CONFIG and the options, checked.

    Without arguments, the default settings with a comment on each key (a
    starting point for a file of your own). With CONFIG, -k or --set, every
    setting after them, as YAML; a bad key or value fails with one line
    naming it.
    """
    from .config import default_yaml

    if not (config or n_components or sets):
        click.echo(default_yaml(), nl=False)
        return
    # checking is this command's work: a bad setting is its answer (one line), not a usage mistake
    if config:
        try:
            load(config)
        except ConfigError as exc:     # the file alone first, so its errors say which file
            msg = str(exc)
            raise click.ClickException(msg if str(config) in msg else f"{config}: {msg}") from None
    try:
        settings = load(config, {"n_components": n_components} if n_components else {}, sets)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(_settings_yaml(settings, config), nl=False)


def _settings_yaml(settings: dict, config) -> str:
    """``settings`` as YAML in the order of the defaults, each changed key with its default as a comment."""
    import yaml

    from .config import defaults

    def flow(value):
        return yaml.safe_dump(value, default_flow_style=True, width=1 << 30).splitlines()[0]

    base = defaults()
    lines = [f"# bigseg settings ({'from ' + config if config else 'defaults'} and the options), checked", ""]
    for key, value in settings.items():
        changed = key in base and flow(value) != flow(base[key])
        lines.append(f"{key}: {flow(value)}" + (f"  # default: {flow(base[key])}" if changed else ""))
    return "\n".join(lines) + "\n"


def _guarded(fn):
    """Run a stage; turn expected failures into one clear line instead of a traceback."""
    from .cluster import ClusterError
    from .features import ImageTooSmallError
    from .lock import FolderBusyError
    from .model import ModelError
    from .pipeline import StageError

    try:
        return fn()
    except (ConfigError, ModelError) as exc:
        raise click.UsageError(str(exc)) from None
    except (StageError, ImageTooSmallError, FileNotFoundError, ValueError, FolderBusyError, ClusterError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:   # a full disk or a folder turned read-only mid-run: what and where, in one line
        where = f"{exc.filename}: " if exc.filename else ""
        raise click.ClickException(f"{where}{exc.strerror or exc}") from None


if __name__ == "__main__":
    main()
