"""Named preprocessors: the few formatting rules that a template cannot express.

Each mirrors lm-evaluation-harness (``lm_eval/tasks/hellaswag/utils.py``,
``lm_eval/tasks/winogrande/preprocess_winogrande.py``) and returns the document with new fields.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Doc = dict[str, Any]


def _hellaswag_clean(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # WikiHow artifacts
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag(doc: Doc) -> Doc:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        **doc,
        "query": _hellaswag_clean(doc["activity_label"] + ": " + ctx),
        "choices": [_hellaswag_clean(e) for e in doc["endings"]],
    }


def winogrande(doc: Doc) -> Doc:
    # Partial scoring: the blank is filled with each option to make the contexts; the model scores
    # the (shared) rest of the sentence after it.
    idx = doc["sentence"].find("_")
    if idx < 0:  # ValueError: the registry reports it with the task and document named
        raise ValueError(f"sentence {doc['sentence'][:60]!r} has no '_' blank to fill")
    contexts = [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]
    return {**doc, "contexts": contexts, "continuation": doc["sentence"][idx + 1 :].strip()}


PREPROCESSORS: dict[str, Callable[[Doc], Doc]] = {"hellaswag": hellaswag, "winogrande": winogrande}
