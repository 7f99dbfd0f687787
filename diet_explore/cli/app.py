"""``diet-explore app``: start the Streamlit explorer (shipped in the package as ``diet_explore_app``).

The library never imports streamlit: this command finds the app's entry script without importing
it and runs ``python -m streamlit run`` on it (replacing this process), the way ``streamlit hello`` or
``mlflow ui`` start theirs. The app opens on ``--cache`` (a cache folder, or a folder of caches),
else on ``cache/`` in the current folder, else on the caches shipped with the package.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from diet_explore.cli._common import int_arg
from diet_explore.core.errors import DietError


def register(sub) -> None:
    p = sub.add_parser("app", help="start the Streamlit explorer (http://localhost:8501)")
    p.add_argument(
        "--cache",
        default=None,
        help="a score cache folder to open, or a folder of cache folders "
        "(default: ./cache, else the caches shipped with the package)",
    )
    p.add_argument("--port", type=int_arg, default=8501, help="port to serve on (default 8501)")
    p.add_argument("--host", default="localhost", help="address to listen on (default localhost: this machine only)")
    p.add_argument("--open", action="store_true", help="open a browser tab (default: just serve, and print the address)")
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default=None,
        help="where the app's jobs run: one local worker process (default), or Ray actors (diet-explore[ray])",
    )
    p.add_argument("--workers", type=int_arg, default=None, help="how many workers (Ray: one per GPU; default 1)")
    p.set_defaults(func=run)


def app_script() -> Path:
    spec = importlib.util.find_spec("diet_explore_app")
    if spec is None or not spec.submodule_search_locations:
        raise DietError("the app package diet_explore_app is not installed", "reinstall diet-explore (pip install .)")
    return Path(list(spec.submodule_search_locations)[0]) / "app.py"


# numpy's OpenBLAS starts a thread per core for every matrix product, however small: the app's are
# (100 x 100) @ (100 x D) bootstrap products, and on two busy cores 700 of them took 9-14 s with two
# threads against 0.25 s with one (measured). The server runs them on one thread unless the user
# says otherwise; torch's own threads (Prune & evaluate) are not affected.
APP_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1"}


def app_environment(cache: str | None, base: Path, env: dict[str, str]) -> dict[str, str]:
    """The environment the app runs in: its folder, the caches ``--cache`` names, and one OpenBLAS
    thread (``APP_THREAD_ENV``) unless the environment already sets one."""
    out = {**APP_THREAD_ENV, **env, "DIET_EXPLORE_APP_DIR": str(base)}
    if cache is None:
        return out
    from diet_explore.core.atomic import check_path

    path = check_path(cache, "--cache").expanduser().resolve()
    if (path / "manifest.json").is_file():  # one cache: open it, and list the caches beside it
        out.update(DIET_EXPLORE_CACHE_DIR=str(path.parent), DIET_EXPLORE_DEFAULT_CACHE=path.name)
    elif path.is_dir():
        out["DIET_EXPLORE_CACHE_DIR"] = str(path)
    else:
        raise DietError(
            f"--cache {cache} is not a folder",
            "give a score cache folder (from `diet-explore profile`) or a folder of them, e.g. --cache cache/smollm2-135m",
        )
    return out


def check_listen(host: str, port: int) -> None:
    """Refuse, as one line, an address the server could not listen on (Streamlit itself ends in a
    traceback for a host that does not resolve, and in a bare line for a port in use)."""
    import socket

    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError):
        raise DietError(
            f"--host {host} is not an address", "e.g. --host localhost, or --host 0.0.0.0 for every interface"
        ) from None
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a closing socket is no clash
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:  # e.g. 8.8.8.8: an address of another machine
                raise DietError(
                    f"cannot listen on {host}: it is not an address of this machine ({exc.strerror or exc})",
                    "use one of this machine's addresses, e.g. --host localhost, or --host 0.0.0.0 for every interface",
                ) from None
            raise DietError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                f"another server may be using port {port}: choose another, e.g. --port {port + 1 if port < 65535 else 8501}",
            ) from None


def app_url(host: str, port: int) -> str:
    """The address to open: an IPv6 host goes in brackets (``http://[::1]:8615``)."""
    return f"http://[{host}]:{port}" if ":" in host and not host.startswith("[") else f"http://{host}:{port}"


def run(args) -> int:
    if not 0 < args.port < 65536:
        raise DietError(f"--port {args.port} is not a port number", "use 1-65535, e.g. --port 8501")
    if importlib.util.find_spec("streamlit") is None:
        raise DietError("streamlit is not installed", "pip install 'diet-explore' installs it; or pip install streamlit")
    check_listen(args.host, args.port)
    env = app_environment(args.cache, Path.cwd(), dict(os.environ))
    if args.executor or args.workers:  # the jobs' executor: read by the library where it starts the worker
        from diet_explore.experiments.executors import EXECUTOR_ENV, WORKERS_ENV, executor_setting, make_executor

        env |= {EXECUTOR_ENV: args.executor or env.get(EXECUTOR_ENV, "local"), WORKERS_ENV: str(args.workers or 1)}
        make_executor(*executor_setting(env))  # refused now (no ray, --workers 0), not when a job starts
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_script()),
        "--server.port",
        str(args.port),
        "--server.address",
        args.host,
        "--server.headless",
        "false" if args.open else "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "viewer",
        "--theme.base",  # the figures' own look is light (diet_explore_app/widgets.py, chart)
        "light",
        # Streamlit forces a full gc.collect(2) after every script run; with torch and
        # transformers imported that holds the GIL for ~250 ms, before the finished page
        # reaches the browser (benchmarks/bench_browser.py). Python's own generational
        # collector still runs.
        "--runner.postScriptGC",
        "false",
    ]
    print(f"diet-explore app on {app_url(args.host, args.port)} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    if os.name == "posix":  # become the server: signals (Ctrl-C, a supervisor's SIGTERM) reach streamlit itself
        os.execve(sys.executable, cmd, env)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0
