"""The explorer from a checkout: ``streamlit run app.py`` serves what ``diet-explore app`` serves.

The app itself ships in the package (``diet_explore_app/app.py``, its pages in
``diet_explore_app/views/``); this script runs it unchanged. The server settings come from
``.streamlit/config.toml``, which Streamlit reads from the folder it is started in (the checkout's
root), and which holds the values ``diet-explore app`` passes as flags (tests/test_app_entry.py
checks that the two agree).
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main() -> None:
    if str(ROOT) not in sys.path:  # `streamlit run /path/to/checkout/app.py` from another folder
        sys.path.insert(0, str(ROOT))
    from diet_explore.cli.app import APP_THREAD_ENV

    # the environment `diet-explore app` starts the server in (one OpenBLAS thread unless the user set
    # one); set before numpy is first imported, which the app's own imports do
    for key, value in APP_THREAD_ENV.items():
        os.environ.setdefault(key, value)
    runpy.run_path(str(ROOT / "diet_explore_app" / "app.py"), run_name="__main__")


main()
