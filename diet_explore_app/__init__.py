"""The Streamlit explorer: ``app.py`` (entry script), ``views/`` (one script per page) and the helpers
the pages share. Started by ``diet-explore app``; the ``diet_explore`` library never imports it."""
