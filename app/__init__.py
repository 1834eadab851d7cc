"""``launch.py app``: the gradio app (Generate, Edit, 3D and Domains tabs in one page).

The app is a composition root beside ``launch.py``: it imports ``editing``, ``generators3d``, ``training`` and
``suite`` and calls the same library functions as the CLI (:mod:`app.runs`). This module holds only the flags and
:func:`main`; gradio and the jobs are imported in :func:`main` (lazy: ``launch.py --help`` loads neither gradio nor
torch).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

HELP = "start the web app (generate, edit, 3D, domains) on this machine (default http://127.0.0.1:7860)"
log = logging.getLogger("app")


def add_arguments(p) -> None:
    from suite.checks import finite_float, int_at_least
    from suite.cli import add_preset_argument

    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 exposes the app to your network (default: %(default)s)")
    g.add_argument("--port", type=int_at_least(1), default=None,
                   help="port (default: $GRADIO_SERVER_PORT or the first free one from 7860)")
    g.add_argument("--share", action="store_true",
                   help="also open a public gradio.live link (off by default: the app is private)")
    g.add_argument("--output-dir", default="outputs/app",
                   help="where results are written; the only folder the app serves files from (default: %(default)s)")
    g.add_argument("--data-root", action="append", default=[], metavar="FOLDER",
                   help="a server folder under which the Domains tab may train on image folders (repeatable; "
                        "default: none, training on server folders is off: with --host, anyone who reaches the app "
                        "could otherwise make it read any folder)")
    g.add_argument("--max-upload-mb", type=finite_float, default=20.0,
                   help="largest accepted upload in MB (default: %(default)s)")
    g.add_argument("--max-megapixels", type=finite_float, default=25.0,
                   help="largest accepted image in megapixels, checked before decoding (default: %(default)s)")
    g.add_argument("--max-jobs", type=int_at_least(1), default=1,
                   help="model-running jobs at a time across all users; others wait in the queue "
                        "(default: %(default)s)")
    g.add_argument("--max-loaded-models", type=int_at_least(1), default=2,
                   help="pipelines kept in memory (least recently used unloaded first) (default: %(default)s)")
    m = p.add_argument_group("models")
    add_preset_argument(m, help="'mini': the mini world's trained models shipped with the suite, the whole app on CPU with "
                        "real results (domain: porcelain); 'tiny': tiny random models built offline (images are "
                        "noise); 'full': real SD1.5 weights and the domain models (default: %(default)s)")
    m.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    m.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="model dtype (default: float16 on cuda, float32 on cpu)")


def config_from_args(args):
    from suite.checks import UserError
    from suite.images import check_max_megapixels

    from .core import AppConfig

    if args.max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    check_max_megapixels(args.max_megapixels)
    if args.port is not None and args.port > 65535:
        raise UserError(f"--port must be between 1 and 65535, got {args.port}")
    _check_host(args.host)
    roots = []
    for root in args.data_root:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise UserError(f"--data-root {root!r} is not a folder on this machine: give an existing folder")
        roots.append(path.resolve())
    out = Path(args.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"the output folder {str(out)!r} cannot be created ({err.strerror}): "
                        "choose another --output-dir") from None
    return AppConfig(preset=args.preset, output_dir=out, device=args.device, dtype=args.dtype,
                     max_upload_mb=args.max_upload_mb, max_megapixels=args.max_megapixels,
                     max_loaded_models=args.max_loaded_models, max_jobs=args.max_jobs, data_roots=tuple(roots))


def _check_host(host: str) -> None:
    """``--host`` is an address this machine can listen on (gradio itself would only say it found no free port)."""
    import socket

    from suite.checks import UserError

    try:
        family, _, _, _, address = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address[0], 0))
    except (OSError, UnicodeError, IndexError) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise UserError(f"cannot listen on --host {host!r} ({reason}): give an address of this machine, e.g. "
                        f"127.0.0.1 (this machine only) or 0.0.0.0 (every network)") from None


def main(args) -> int:
    from suite.extras import require

    require("the app", "gradio")  # before its output folder is made
    # 1. Settings; gradio's upload cache lives inside the output folder unless GRADIO_TEMP_DIR says otherwise,
    #    so every file the app serves is under --output-dir. No analytics: nothing leaves this machine.
    cfg = config_from_args(args)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(cfg.output_dir / ".uploads"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own health checks, one line per request
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this address can use the app", args.host)

    # 2. Build the page and serve it until Ctrl-C.
    from .core import ServedCopies
    from .runs import stop_jobs
    from .ui import build_app, launch

    demo = build_app(cfg)
    copies = ServedCopies(cfg).start()  # gradio's copies of results: a day, and none left after a clean stop
    try:
        launch(demo, cfg, host=args.host, port=args.port, share=args.share, block=True)
    finally:  # running jobs stop at their next step and clean up as a Cancel does, then the server closes
        with _signals_deferred():
            try:
                stop_jobs(demo._suite_jobs)
            finally:
                copies.stop()
                demo.close(verbose=False)
    return 0


@contextlib.contextmanager
def _signals_deferred():
    """While the app stops (its jobs cleaning up, up to a minute), a second Ctrl-C or SIGTERM says so instead of
    cutting the cleanup short: it skipped the sweep of gradio's copies and left job threads running as the
    interpreter ended (the abort that stopping the jobs prevents). ``kill -9`` still stops it at once."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def still_stopping(signum, frame):
        print("still stopping: the running jobs are cleaning up (up to a minute; kill -9 stops at once)",
              file=sys.stderr)

    before = {s: signal.signal(s, still_stopping) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


__all__ = ["HELP", "add_arguments", "main", "config_from_args"]
