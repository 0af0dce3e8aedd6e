"""The ``proxyfda`` command: prepare, embed, drift, report, finetune, app."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .config import (BN_MODES, KNN_BACKENDS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, PROJECTION_METHODS, SAMPLERS,
                     DriftConfig, FinetuneConfig, check_image_size)
from .errors import ProxyFDAError
from .paths import check_writable
from .methods import METHODS

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_ENTRY = REPO_ROOT / "app" / "main.py"


#: config fields with a fixed set of values: --help lists them and argparse refuses others
CHOICES = {"method": tuple(METHODS), "bn_mode": BN_MODES, "sampler": SAMPLERS, "knn_backend": KNN_BACKENDS,
           "projection": PROJECTION_METHODS}
#: --overwrite of the commands that write a run directory (proxyfda.runs.RunWriter)
OVERWRITE_HELP = ("replace the run already in --out: the new run is built beside it and takes its place "
                  "when it has finished, so the old one stays whole until then")
#: fields whose None default means "the method's own"
METHOD_DEFAULT_HELP = "(default: the method's own; naive and the regularised methods: {}, safe: {})"
#: what a config field's option means, where its name alone does not say
FIELD_HELP = {"labels": "a labels file (.npy, .txt, .csv or .parquet[#COLUMN]): one class name or id per image of "
                        "the whole data set, in its order, instead of the data's own classes"}


def _add_config_options(parser: argparse.ArgumentParser, config_cls) -> None:
    """One ``--option`` per config field, typed and defaulted from the dataclass itself."""
    from .methods import SAFE_TRAINING_DEFAULTS, TRAINING_DEFAULTS

    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        kind = {"int": int, "float": float, "dict": _json_object}.get(str(f.type).removesuffix(" | None"), str)
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if default is None and f.name in TRAINING_DEFAULTS:
            help_text = METHOD_DEFAULT_HELP.format(TRAINING_DEFAULTS[f.name], SAFE_TRAINING_DEFAULTS[f.name])
        else:
            help_text = f"(default: {json.dumps(default)})"
        if f.name in FIELD_HELP:
            help_text = f"{FIELD_HELP[f.name]} {help_text}"
        if str(f.type) == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=default, choices=CHOICES.get(f.name),
                                help=help_text, action=_StoreGiven)


class _StoreGiven(argparse.Action):
    """Store an option's value and remember that it was given (``args.given``), so a command can tell an
    explicit ``--n 2000`` from the default."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


def _methods_epilog() -> str:
    rows = "\n".join(f"  {m.name:<10} {m.summary}" for m in METHODS.values())
    return (f"methods:\n{rows}\n\n--reg-options takes the method's options as JSON, e.g. "
            "'{\"k\": 8, \"weight\": 2.0}' for fda; docs/METHOD.md explains each.")


def _json_object(text: str) -> dict:
    """A JSON object on the command line, e.g. --reg-options '{"k": 8, "weight": 2.0}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg}): {text}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"k\": 8}}', got {text}")
    return value


def _config_from_args(config_cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: v for k, v in vars(args).items() if k in names})


class _StageBar:
    """A tqdm bar driven by (stage message, fraction done) callbacks."""

    def __init__(self):
        self.bar = tqdm(total=100, bar_format="{percentage:3.0f}%|{bar:20}| {desc} [{elapsed}<{remaining}]")

    def __call__(self, message: str, fraction: float) -> None:
        self.bar.n = int(100 * fraction)
        self.bar.set_description_str(message)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class _Bar:
    """A tqdm bar driven by (done, total) callbacks."""

    def __init__(self, desc: str):
        self.bar = tqdm(desc=desc, unit="img", leave=False)

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def cmd_embed(args: argparse.Namespace) -> None:
    from .data import load_images
    from .default import ensure_default_for
    from .distributed import init_from_env, is_main
    from .drift import encoder_features

    check_image_size(args.image_size)
    check_writable(args.out, is_file=True)
    init_from_env()  # under torchrun: each process embeds its shard of the images, on its own GPU if any
    ensure_default_for([args.encoder], _finetune_printer("default fine-tune"))
    images = load_images(args.data, n=args.n or None, seed=args.seed)
    bar = _Bar(f"embed {args.encoder}")
    features = encoder_features(args.encoder, images, args.image_size, progress=bar)
    bar.close()
    if not is_main():  # rank 0 alone writes and reports
        return
    _tell_about(images)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, features)
    np.save(out.with_name(out.stem + ".labels.npy"), images.labels)
    print(f"wrote {out} {features.shape} and {out.stem}.labels.npy; {len(images.skipped)} files skipped")


def _tell_about(images) -> None:
    """Print what the user should know about an image set: fewer images than asked for, skipped files."""
    for line in [*images.notes, images.skipped_summary()]:
        if line:
            print(f"proxyfda: note: {line}", file=sys.stderr)


def _finetune_printer(desc: str = "fine-tune", total: int | None = None):
    """A callback for fine-tuning records: a step bar (opened at the first record) and eval lines."""
    bar = None

    def callback(record: dict) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(desc=desc, unit="step", total=total or _default_steps(), leave=False)
        if record["kind"] == "train":
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            if bar.n == bar.total:
                bar.close()
        else:
            kept = f", probe overlap@10 with step 0 {record['probe_overlap']:.3f}" if "probe_overlap" in record else ""
            tqdm.write(f"step {record['step']}: eval accuracy {record['accuracy']:.3f}{kept}")

    return callback


def _default_steps() -> int:
    from .methods import resolve_config
    from .runs import DEFAULT_FINETUNE

    return resolve_config(DEFAULT_FINETUNE).steps


def _embedding_files(args: argparse.Namespace) -> None:
    """``drift --features-a A --features-b B [--images SPEC]``: the config's encoders become ``vectors:`` specs
    and its data the images, or ``rows:N`` (A's rows) without them; ``--n`` left out means every row."""
    from .vectors import row_count

    given = [flag for flag, value in (("--features-a", args.features_a), ("--features-b", args.features_b)) if value]
    if not given:
        if args.images:
            raise ProxyFDAError("--images goes with --features-a and --features-b (the embedding files whose "
                                "thumbnails they are); to embed images, give them as --data")
        return
    if len(given) == 1:
        missing = "--features-b" if given == ["--features-a"] else "--features-a"
        raise ProxyFDAError(f"{given[0]} needs {missing} too: drift compares two embedding files of the same points")
    args.pretrained, args.finetuned = f"vectors:{args.features_a}", f"vectors:{args.features_b}"
    args.data = args.images or f"rows:{row_count(args.features_a)}"
    if "n" not in getattr(args, "given", ()):
        args.n = 0


def cmd_drift(args: argparse.Namespace) -> None:
    from .default import ensure_default_for
    from .drift import run_drift, run_three_way

    check_writable(args.out)
    _embedding_files(args)
    config = _config_from_args(DriftConfig, args)
    ensure_default_for([config.pretrained, config.finetuned, config.compare], _finetune_printer("default fine-tune"))
    bar = _StageBar()
    if config.compare:
        images, both = run_three_way(config, progress=bar)
        report = both.b
    else:
        images, report = run_drift(config, progress=bar)
    bar.close()
    _tell_about(images)
    out = report.save(args.out)
    print(json.dumps(report.metrics, indent=2))
    for note in report.metrics.get("omitted", {}).values():
        print(f"not computed: {note}")
    if "knn_note" in report.metrics:  # an approximate graph is announced with its recall, never silently
        print(f"note: {report.metrics['knn_note']}")
    print(f"wrote {out / 'metrics.json'} and {out / 'points.parquet'}")
    if config.compare:
        both.c.save(out / "compare")
        both.save(out)
        print(json.dumps(both.summary(), indent=2))
        print(f"wrote the second fine-tune's report to {out / 'compare'} and the comparison to "
              f"{out / 'three_way.parquet'}")


def cmd_finetune(args: argparse.Namespace) -> int:
    from .default import ensure_default_for
    from .distributed import is_main
    from .methods import resolve_config
    from .training import finetune

    config = _config_from_args(FinetuneConfig, args)
    ensure_default_for([config.base_encoder], _finetune_printer("default fine-tune"))
    result = finetune(config, args.out, callback=_finetune_printer(total=resolve_config(config).steps),
                      overwrite=args.overwrite)
    if not is_main():  # under torchrun rank 0 alone reports; every rank exits alike
        return 1 if result.status == "diverged" else 0
    if result.status == "diverged":
        print(f"proxyfda: the run diverged at step {result.steps_done + 1}: its loss (or weights) became NaN or "
              f"infinite, so it stopped there and kept its last finite checkpoint ({result.run_dir}); try a lower "
              "--lr", file=sys.stderr)
        return 1
    print(f"{result.status} after {result.steps_done} steps; eval accuracy {result.final_eval_accuracy}; "
          f"load it as 'run:{result.run_dir}'")
    return 0


def cmd_forgetting(args: argparse.Namespace) -> None:
    from .forgetting import forgetting_report

    check_writable(args.out)
    report = forgetting_report(args.runs, progress=lambda message: print(message, file=sys.stderr))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'run':<28}{'method (preset)':<18}{'A_LP':>7}{'mean ΔLP':>10}{'OTDD':>8}{'L2':>8}")
    for name, run in report["runs"].items():
        print(f"{name:<28}{run['label']:<18}{100 * run['A_LP']:>7.1f}{100 * run['delta_LP']['mean']:>+10.1f}"
              f"{run['otdd']['mean']:>8.3f}{run['l2']['mean']:>8.3f}")
    print(f"wrote {out / 'report.json'}")


def cmd_wise(args: argparse.Namespace) -> None:
    from .interpolation import wise_run

    check_writable(args.out)
    out = wise_run(args.run, args.alpha, args.out, overwrite=args.overwrite)
    print(f"wrote WiSE-FT (alpha={args.alpha}) of {args.run} to {out}; load it as 'run:{out}'")


def cmd_report(args: argparse.Namespace) -> None:
    """The drift analysis of the options as one self-contained HTML file."""
    from .default import ensure_default_for
    from .report_html import check_output, write_report

    check_output(args.out)  # before building the default or embedding anything
    _embedding_files(args)
    config = _config_from_args(DriftConfig, args)
    ensure_default_for([config.pretrained, config.finetuned], _finetune_printer("default fine-tune"))
    bar = _StageBar()
    path = write_report(config, args.out, progress=bar)
    bar.close()
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); it opens offline in any browser")


def cmd_prepare(args: argparse.Namespace) -> None:
    """Build the default fine-tuned encoder and warm every cache the app's first page needs."""
    from .default import ensure_default_finetuned
    from .drift import cached_drift, drift_features, load_drift_images
    from .projection import project_pair

    run_dir = ensure_default_finetuned(callback=_finetune_printer("default fine-tune"))
    print(f"default fine-tuned encoder: {run_dir}")
    config = DriftConfig()
    images = load_drift_images(config)
    bar = _StageBar()
    x_a, x_b = drift_features(config, images, progress=bar)
    bar.close()
    cached_drift(x_a, x_b, images.labels, images.class_names, config.k, backend=config.knn_backend)
    print("projecting both spaces with UMAP (the first fit in a process compiles numba: about a minute)")
    project_pair(x_a, x_b, method=config.projection, seed=config.seed)
    print("ready")


LOOPBACK = "127.0.0.1"


def streamlit_command(port: int, headless: bool, address: str = LOOPBACK) -> list[str]:
    """The ``streamlit run`` command line of the app. Its other settings (no e-mail prompt, no usage
    statistics, no "Deploy" button, the theme) ship in ``app/.streamlit/config.toml``."""
    return [sys.executable, "-m", "streamlit", "run", str(APP_ENTRY), "--server.port", str(port),
            "--server.headless", "true" if headless else "false", "--server.address", address]


def cmd_app(args: argparse.Namespace) -> None:
    from .paths import ALLOW_ENV

    if not APP_ENTRY.exists():
        raise ProxyFDAError(f"the app's entry point {APP_ENTRY} is missing: install proxyfda from a checkout "
                            "with `pip install -e .`")
    if args.host != LOOPBACK:
        print(f"proxyfda: warning: the app will answer on {args.host}, not only on this machine; it has no login, "
              "so anyone who can reach that address can use it (and read the folders it is allowed to)",
              file=sys.stderr)
    folders = [Path(folder).expanduser() for folder in args.allow]
    missing = [str(folder) for folder in folders if not folder.is_dir()]
    if missing:
        raise ProxyFDAError(f"--allow needs existing folders; not found: {', '.join(missing)}")
    if folders:
        os.environ[ALLOW_ENV] = os.pathsep.join(str(folder.resolve()) for folder in folders)
    command = streamlit_command(args.port, args.headless, args.host)
    os.execv(command[0], command)


DRIFT_EPILOG = """embedding files you already have:
  proxyfda drift --features-a before.npy --features-b after.parquet#embedding [--labels classes.csv]
                 [--images folder:DIR] --out DIR
  compares them row by row (every row unless --n; one class unless --labels or --images give classes).
  Files: .npy [N, d]; .parquet with a list column; .csv with "[0.1, 0.2, ...]" strings or numeric columns.
  The same works as encoder specs: --pretrained vectors:before.npy --finetuned vectors:after.npy --data rows:N.
"""


def _add_embedding_options(parser: argparse.ArgumentParser) -> None:
    """``--features-a/-b`` and ``--images`` of ``drift`` and ``report`` (see `_embedding_files`)."""
    parser.add_argument("--features-a", metavar="FILE", help="embeddings you already have, before (pre-trained): .npy "
                        "[N, d], or .parquet/.csv with a column of vectors (FILE#COLUMN names it); replaces "
                        "--pretrained")
    parser.add_argument("--features-b", metavar="FILE", help="the same points' embeddings after (fine-tuned), in the "
                        "same order; its width may differ from A's; replaces --finetuned")
    parser.add_argument("--images", metavar="SPEC", help="with --features-a/-b: the data spec of the images they "
                        "embed, in the same order (thumbnails; their classes unless --labels); without it there are "
                        "no images")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxyfda", description="See what fine-tuning does to a vision "
                                     "encoder's feature space.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="build the default fine-tuned encoder and warm the app's caches")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("embed", help="write one encoder's features of an image set to .npy")
    p.add_argument("--encoder", required=True, help="encoder spec, e.g. efficientnet-lite0 or run:DIR")
    p.add_argument("--data", required=True, help="data spec, e.g. fashion-mnist:test or folder:/path")
    p.add_argument("--n", type=int, default=0, help="class-balanced sample size (0: all)")
    p.add_argument("--image-size", type=int, default=64,
                   help=f"input resolution, {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} px (0: the encoder's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .npy file")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("drift", help="compare two encoders' (or two embedding files') kNN graphs over the same "
                       "images", epilog=DRIFT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_options(p, DriftConfig)
    _add_embedding_options(p)
    p.add_argument("--out", required=True, help="directory for metrics.json and points.parquet")
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser("report", help="write a drift analysis as one self-contained HTML file (opens offline)",
                       epilog=DRIFT_EPILOG.replace("proxyfda drift", "proxyfda report").replace("--out DIR",
                                                                                             "--out FILE.html"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_options(p, DriftConfig)
    _add_embedding_options(p)
    p.add_argument("--out", required=True, help="the HTML file to write, e.g. drift-report.html")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("finetune", help="fine-tune an encoder and save a run directory", epilog=_methods_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_options(p, FinetuneConfig)
    p.add_argument("--out", required=True, help="run directory: a new or empty folder")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("forgetting", help="linear-probe forgetting (A_LP, ΔLP) and feature distances of runs")
    p.add_argument("--runs", nargs="+", required=True, help="run directories")
    p.add_argument("--out", required=True, help="directory for report.json")
    p.set_defaults(func=cmd_forgetting)

    p = sub.add_parser("wise", help="WiSE-FT: interpolate a run's weights with its pre-trained encoder")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--alpha", type=float, default=0.5, help="0: pre-trained, 1: fine-tuned (default 0.5)")
    p.add_argument("--out", required=True, help="new run directory")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_wise)

    p = sub.add_parser("app", help="start the Streamlit app")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--headless", action="store_true", help="do not open a browser")
    p.add_argument("--host", default=LOOPBACK, help=f"the address to answer on (default {LOOPBACK}: this machine "
                   "only; anything else lets other machines in, with no login)")
    p.add_argument("--allow", action="append", default=[], metavar="DIR",
                   help="a folder the app may read images and runs from, besides $PROXYFDA_DATA "
                        "(default ~/proxyfda-data), the runs folder and the cache (repeatable)")
    p.set_defaults(func=cmd_app)
    return parser


def _user_warnings(show_other):
    """A ``warnings.showwarning`` that prints the library's warnings meant for the user (a run that did not
    complete) as one plain line, and passes any other warning to ``show_other``."""
    from .runs import IncompleteRunWarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, IncompleteRunWarning):
            print(f"proxyfda: warning: {message}", file=sys.stderr)
        else:
            show_other(message, category, filename, lineno, file, line)

    return show


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 1 a fine-tune that diverged, 2 an error (said in a sentence)."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _user_warnings(warnings.showwarning)
        try:
            return args.func(args) or 0
        except ProxyFDAError as exc:
            print(f"proxyfda: error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
