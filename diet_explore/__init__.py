"""diet-explore: explore, tune and ship DIET structured-pruning masks.

One subpackage per stage of the pipeline; data flows downward and nothing imports upward:

    cli            the commands (argument parsing, printing)
    experiments    sweeps, reports, the run store, the tuning loop
    evaluation     scoring, metrics and CIs, the evaluation cache
    pruning        slicing hidden dims out, saving the pruned folder
    masking        importance, selection, the vote, baselines, mask files, agreement, stability
    profiling      hooks, the profile runner, the score cache format
    tasks, models  the task registry and data; built-in models, loading, family adapters
    core           errors, atomic writes, configs, clock, assets, batching

The library never imports streamlit; the app (``diet_explore_app``) is a thin layer over it.
"""

__version__ = "0.1.0"
