import json

import pytest

from diet_explore.data import calibration_ids, evaluation_ids, requests_for
from diet_explore.errors import DietError
from diet_explore.tasks.registry import build_request, load_registry, resolve_tasks

TASKS = ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]


def spec(name):
    return load_registry()[name]


def test_the_seven_paper_tasks_are_registered():
    assert list(load_registry())[:7] == TASKS


def test_boolq_and_rte_templates_match_lm_eval():
    r = build_request(spec("boolq"), {"passage": "P.", "question": "is it", "answer": True}, 0)
    assert r.contexts[0] == "P.\nQuestion: is it?\nAnswer:" and r.continuations == [" no", " yes"] and r.gold == 1
    r = build_request(spec("rte"), {"sentence1": "A.", "sentence2": "B.", "label": 1}, 0)
    assert r.contexts[0] == "A.\nQuestion: B. True or False?\nAnswer:" and r.continuations == [" True", " False"] and r.gold == 1


def test_hellaswag_preprocessing_matches_lm_eval():
    doc = {"activity_label": "Roof shingle removal", "ctx_a": "A man is on a roof.", "ctx_b": "he",
           "endings": ["is using [title] wrap.", "rips  tiles."], "label": "1"}
    r = build_request(spec("hellaswag"), doc, 0)
    assert r.contexts[0] == "Roof shingle removal: A man is on a roof. He"
    assert r.continuations == [" is using. wrap.", " rips tiles."] and r.gold == 1


def test_winogrande_scores_the_shared_continuation_after_each_option():
    doc = {"sentence": "Sarah beat Maria so _ won the cup.", "option1": "Sarah", "option2": "Maria", "answer": "1"}
    r = build_request(spec("winogrande"), doc, 0)
    assert r.contexts == ["Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"]
    assert r.continuations == [" won the cup.", " won the cup."] and r.gold == 0
    assert r.gold_text() == "Sarah beat Maria so Sarah won the cup."


def test_arc_and_openbookqa_gold_is_the_index_of_the_answer_key():
    doc = {"question": "Q?", "choices": {"text": ["x", "y", "z"], "label": ["A", "B", "C"]}, "answerKey": "C"}
    r = build_request(spec("arc_easy"), doc, 0)
    assert r.contexts[0] == "Question: Q?\nAnswer:" and r.continuations == [" x", " y", " z"] and r.gold == 2
    doc = {"question_stem": "Stem", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B "}
    r = build_request(spec("openbookqa"), doc, 0)
    assert r.contexts[0] == "Stem" and r.gold == 1


@pytest.mark.parametrize("task", TASKS)
def test_calibration_and_evaluation_draws_are_disjoint_and_seeded(task):
    s = spec(task)
    cal = calibration_ids(s, 100)
    ev = evaluation_ids(s, 50)
    assert len(cal) == 100 and len(ev) == 50 and not set(cal) & set(ev)
    assert cal == calibration_ids(s, 100) and cal != calibration_ids(s, 100, seed=7)
    # a bigger calibration draw recorded in a cache is excluded explicitly
    big = calibration_ids(s, 150) if task != "rte" else calibration_ids(s, 120)
    assert not set(big) & set(evaluation_ids(s, 50, exclude=set(big)))


def test_real_documents_become_requests_with_a_valid_gold():
    for task in TASKS:
        for r in requests_for(spec(task), calibration_ids(spec(task), 5)):
            assert 0 <= r.gold < r.n_choices and all(c.startswith(" ") for c in r.continuations)


def test_more_samples_than_the_split_holds_is_a_clear_error():
    with pytest.raises(DietError, match="rte has 277 examples"):
        calibration_ids(spec("rte"), 500)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(DietError, match="unknown task") as err:
        resolve_tasks("boolq,nope")
    assert "hellaswag" in err.value.hint


def test_a_user_adds_a_task_with_a_json_entry_and_no_code(tmp_path, monkeypatch):
    import datasets

    folder = tmp_path / "mydata"
    datasets.Dataset.from_list([{"q": "2+2", "a": "4", "b": "5", "y": 0}] * 3).save_to_disk(str(folder))
    entry = {"mymath": {"dataset": {"path": str(folder)}, "text": "Q: {q}\nA:", "choices_field": "opts",
                        "gold": {"field": "y"}}}
    entry["mymath"].pop("choices_field")
    entry["mymath"]["choices"] = ["4", "5"]
    (tmp_path / "tasks.json").write_text(json.dumps(entry))
    monkeypatch.setenv("DIET_EXPLORE_TASKS", str(tmp_path / "tasks.json"))
    (mymath,) = resolve_tasks("mymath")
    (r,) = requests_for(mymath, [1])
    assert r.contexts[0] == "Q: 2+2\nA:" and r.continuations == [" 4", " 5"] and r.gold == 0


def test_a_malformed_task_entry_is_named(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"oops": {"dataset": {}, "format": "essay", "gold": {"field": "y"}}}))
    with pytest.raises(DietError, match="task 'oops'.*format 'essay'"):
        load_registry([tmp_path / "bad.json"])
