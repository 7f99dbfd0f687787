"""The committed score caches (one folder each), shipped in the wheel as ``diet_explore_caches`` so that
`diet-explore app` opens on them from any folder after a plain `pip install`."""
