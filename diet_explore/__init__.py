"""diet-explore: explore, tune and ship DIET structured-pruning masks.

The library never imports streamlit; the app in ``app.py``/``app_pages/`` is a thin layer over it.
"""

__version__ = "0.1.0"
