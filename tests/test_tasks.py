import json
import re
from pathlib import Path

import pytest

from diet_explore.core.errors import DietError
from diet_explore.tasks.data import calibration_ids, check_task_data, evaluation_ids, load_task_data, requests_for
from diet_explore.tasks.registry import build_request, load_registry, resolve_tasks

TASKS = ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]


def spec(name):
    return load_registry()[name]


def test_the_seven_paper_tasks_are_registered():
    assert list(load_registry())[:7] == TASKS


def test_each_task_reports_the_paper_convention_as_its_main_metric():
    """acc_norm for HellaSwag, ARC and OpenBookQA, acc elsewhere (SliceGPT's and DIET's tables);
    WinoGrande's partial scoring has no acc_norm at all, as in lm-eval."""
    registry = load_registry()
    assert {t: registry[t].main_metric for t in TASKS} == {
        "boolq": "acc",
        "rte": "acc",
        "hellaswag": "acc_norm",
        "winogrande": "acc",
        "arc_easy": "acc_norm",
        "arc_challenge": "acc_norm",
        "openbookqa": "acc_norm",
    }
    assert registry["winogrande"].metrics == ("acc",) and registry["openbookqa"].metrics == ("acc", "acc_norm")


def test_a_main_metric_a_task_cannot_report_is_refused(tmp_path):
    import json

    bad = {
        "wg2": {
            **json.loads((Path(load_registry.__code__.co_filename).parent / "builtin.json").read_text())["winogrande"],
            "main_metric": "acc_norm",
        }
    }
    (tmp_path / "t.json").write_text(json.dumps(bad))
    with pytest.raises(DietError, match="main_metric 'acc_norm' is not among its metrics"):
        load_registry([tmp_path / "t.json"])


def test_boolq_and_rte_templates_match_lm_eval():
    r = build_request(spec("boolq"), {"passage": "P.", "question": "is it", "answer": True}, 0)
    assert r.contexts[0] == "P.\nQuestion: is it?\nAnswer:" and r.continuations == [" no", " yes"] and r.gold == 1
    r = build_request(spec("rte"), {"sentence1": "A.", "sentence2": "B.", "label": 1}, 0)
    assert r.contexts[0] == "A.\nQuestion: B. True or False?\nAnswer:" and r.continuations == [" True", " False"] and r.gold == 1


def test_hellaswag_preprocessing_matches_lm_eval():
    doc = {
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is on a roof.",
        "ctx_b": "he",
        "endings": ["is using [title] wrap.", "rips  tiles."],
        "label": "1",
    }
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
    entry = {"mymath": {"dataset": {"path": str(folder)}, "text": "Q: {q}\nA:", "choices_field": "opts", "gold": {"field": "y"}}}
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


# ------------------------------------------------------------------------------------------------
# User task files that do not fit their data, or have the wrong shape: DietErrors, never tracebacks
# ------------------------------------------------------------------------------------------------
ROWS = {"s1": ["A.", "B.", "C."], "s2": ["x", "y", "z"], "label": [0, 1, 1]}


def _task_file(tmp_path, content, name="tasks.json"):
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return path


@pytest.fixture()
def tiny_data(tmp_path):
    import datasets

    folder = tmp_path / "tiny"
    datasets.Dataset.from_dict(ROWS).save_to_disk(str(folder))
    return folder


def _entry(folder, **changes):
    entry = {"dataset": {"path": str(folder)}, "text": "{s1} / {s2}", "choices": ["no", "yes"], "gold": {"field": "label"}}
    return {**entry, **changes}


def _user_spec(tmp_path, **changes):
    return load_registry([_task_file(tmp_path, {"mine": _entry(tmp_path / "tiny", **changes)})])["mine"]


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"text": "{question}"}, r"task 'mine', doc 0: text '\{question\}' names field \{question\}"),
        ({"gold": {"field": "answer"}}, r"task 'mine', doc 0: gold.field 'answer' is not in the document"),
        ({"choices": None, "choices_field": "opts"}, r"task 'mine', doc 0: choices_field 'opts' is not in the document"),
        ({"choices": None, "choices_field": "s1"}, r"task 'mine', doc 0: choices_field 's1' is str 'A\.', not a non-empty list"),
        ({"choices": ["only"]}, r"task 'mine', doc 1: gold index 1 \(from 'label'\) is outside the 1 choice"),
        ({"gold": {"field": "s2", "type": "int"}}, r"task 'mine', doc 0: gold.field 's2' is 'x', not an integer"),
        ({"gold": {"field": "label", "type": "index_of", "in": "s2"}}, r"task 'mine', doc 0: choices_field|gold.in 's2' is str"),
        (
            {
                "preprocess": "winogrande",
                "format": "partial",
                "text": None,
                "choices": None,
                "contexts_field": "contexts",
                "continuation_field": "continuation",
            },
            r"task 'mine', doc 0: preprocess 'winogrande' needs field 'sentence'",
        ),
    ],
)
def test_a_task_entry_that_does_not_fit_its_data_names_task_field_and_doc(tmp_path, tiny_data, changes, match):
    spec = _user_spec(tmp_path, **changes)
    with pytest.raises(DietError, match=match) as err:
        requests_for(spec, [0, 1, 2])
    assert err.value.hint
    with pytest.raises(DietError, match=match):  # the pre-load check finds it (first documents, or given ids)
        check_task_data(spec, [0, 1, 2])


def test_the_pre_load_check_builds_the_first_documents_and_returns_the_split_size(tmp_path, tiny_data):
    assert check_task_data(_user_spec(tmp_path)) == 3
    with pytest.raises(DietError, match="doc 0: text"):
        check_task_data(_user_spec(tmp_path, text="{nope}"))
    with pytest.raises(DietError, match="doc 7 is outside its 3 examples"):
        check_task_data(_user_spec(tmp_path), [7])


def test_gold_is_range_checked_on_every_document_not_only_when_read(tmp_path, tiny_data):
    # label -1 (an unlabelled split) would index the last choice silently; 2 would be an IndexError
    spec = _user_spec(tmp_path, gold={"field": "label", "offset": -1})
    with pytest.raises(DietError, match=r"doc 0: gold index -1 .* outside the 2 choice"):
        requests_for(spec, [0])
    assert requests_for(spec, [1])[0].gold == 0


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"text": "{s1"}, r"text '\{s1' is not a valid template"),
        ({"text": "{s1} }"}, r"text '\{s1\} \}' is not a valid template"),
        ({"text": "{} and {0}"}, r"text '\{\} and \{0\}' has a positional field \{\}"),
        ({"choices": "ab"}, r"choices is string 'ab', not a non-empty list of strings"),
        ({"choices": []}, r"choices is list \[\], not a non-empty"),
        ({"choices": [0, 1]}, r"choices is list \[0, 1\]"),
        ({"dataset": "glue"}, r"dataset is string 'glue', not an object"),
        ({"dataset": {"path": 3}}, r"dataset.path is int 3, not a string"),
        ({"dataset": {"paht": "x"}}, r"dataset has unknown field\(s\) 'paht'"),
        ({"dataset": {"split": "validation"}}, r"dataset names no data"),
        ({"gold": 3}, r"gold is int 3, not an object"),
        ({"gold": {}}, r"gold needs a 'field'"),
        ({"gold": {"field": "label", "type": "float"}}, r"gold.type 'float' is unknown"),
        ({"gold": {"field": "label", "offset": "1"}}, r"gold.offset is string '1', not an integer"),
        ({"gold": {"field": "label", "type": "index_of"}}, r"gold.type index_of needs gold.in"),
        ({"text": ["{s1}"]}, r"text is list \['\{s1\}'\], not a string"),
        ({"format": None}, r"format is null, not a string"),
        ({"target_delimiter": 1}, r"target_delimiter is int 1, not a string"),
        ({"name": "other"}, r"unknown field\(s\) 'name'"),
    ],
)
def test_a_task_file_of_the_wrong_shape_fails_when_read_naming_file_task_and_field(tmp_path, changes, match):
    path = _task_file(tmp_path, {"mine": _entry(tmp_path, **changes)})
    with pytest.raises(DietError, match=rf"task 'mine' in {re.escape(str(path))}: {match}") as err:
        load_registry([path])
    assert err.value.hint


@pytest.mark.parametrize(
    "content, match",
    [
        (["mine"], "top level is list, not an object"),
        ({"mine": "x"}, "task 'mine' in .*: entry is string 'x', not an object"),
        ({"mine": {"text": "{s1}", "choices": ["a"], "gold": {"field": "label"}}}, "task 'mine' in .*: needs a 'dataset'"),
    ],
)
def test_a_task_file_whose_top_level_or_entry_is_not_an_object_is_named(tmp_path, content, match):
    path = _task_file(tmp_path, content)
    with pytest.raises(DietError, match=match):
        load_registry([path])


def test_a_dataset_path_that_is_not_a_saved_dataset_is_a_clear_error(tmp_path):
    (tmp_path / "notdata").mkdir()
    (tmp_path / "notdata" / "readme.txt").write_text("hi")
    spec = load_registry([_task_file(tmp_path, {"mine": _entry(tmp_path / "notdata")})])["mine"]
    with pytest.raises(
        DietError, match=f"task 'mine': dataset folder {tmp_path / 'notdata'} is not a readable saved dataset"
    ) as err:
        load_task_data(spec)
    assert "save_to_disk" in err.value.hint


def _save_dict(folder):
    import datasets

    half = {k: v[:2] for k, v in ROWS.items()}
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(ROWS), "validation": datasets.Dataset.from_dict(half)}
    ).save_to_disk(str(folder))


def test_a_dataset_dict_folder_uses_the_entry_split(tmp_path):
    _save_dict(tmp_path / "dd")
    entry = _entry(tmp_path / "dd")
    path = _task_file(
        tmp_path,
        {
            "dev": {**entry, "dataset": {"path": str(tmp_path / "dd"), "split": "validation"}},
            "train": {**entry, "dataset": {"path": str(tmp_path / "dd"), "split": "train"}},
        },
    )
    registry = load_registry([path])
    assert len(load_task_data(registry["dev"])) == 2 and len(load_task_data(registry["train"])) == 3
    (r,) = requests_for(registry["train"], [2])
    assert r.contexts[0] == "C. / z" and r.gold == 1
    assert calibration_ids(registry["dev"], 2) == [0, 1]


def test_a_missing_split_of_a_dataset_dict_lists_the_splits(tmp_path):
    _save_dict(tmp_path / "dd")
    entry = {**_entry(tmp_path / "dd"), "dataset": {"path": str(tmp_path / "dd"), "split": "test"}}
    spec = load_registry([_task_file(tmp_path, {"mine": entry})])["mine"]
    with pytest.raises(DietError, match=f"task 'mine': dataset folder {tmp_path / 'dd'} has no split 'test'") as err:
        load_task_data(spec)
    assert "train, validation" in err.value.hint


def _cli_tasks(capsys, *argv):
    from diet_explore.cli import main

    rc = main(["tasks", *argv])
    return rc, capsys.readouterr()


def test_the_tasks_command_lists_the_builtins_and_explains_a_user_task_that_does_not_fit(tmp_path, tiny_data, capsys):
    _save_dict(tmp_path / "dd")
    path = _task_file(
        tmp_path,
        {
            "good": _entry(tiny_data),
            "splits": {**_entry(tmp_path / "dd"), "dataset": {"path": str(tmp_path / "dd"), "split": "validation"}},
            "badtext": _entry(tiny_data, text="{question}"),
            "notdata": _entry(tmp_path),
        },
    )
    rc, out = _cli_tasks(capsys, "--task-file", str(path))
    rows = {line.split()[0]: line.split()[2] for line in out.out.splitlines()[1:12] if line.strip()}
    assert rc == 0 and all(t in rows for t in TASKS)
    assert rows["good"] == "3" and rows["splits"] == "2" and rows["badtext"] == "n/a" and rows["notdata"] == "n/a"
    assert "badtext: task 'badtext', doc 0: text '{question}' names field {question}" in out.out
    assert f"notdata: task 'notdata': dataset folder {tmp_path} is not a readable saved dataset" in out.out


@pytest.mark.parametrize("content", [["mine"], {"mine": _entry("x", dataset="glue")}, {"mine": _entry("x", gold=3)}])
def test_the_tasks_command_reports_a_malformed_task_file_without_a_traceback(tmp_path, capsys, content):
    rc, out = _cli_tasks(capsys, "--task-file", str(_task_file(tmp_path, content)))
    assert rc == 2 and out.err.startswith("error: ") and "Traceback" not in out.err and "hint: " in out.err


def test_a_task_named_twice_is_resolved_once_for_profile_and_eval():
    from diet_explore.tasks.registry import resolve_tasks

    assert [s.name for s in resolve_tasks("rte,boolq,rte")] == ["rte", "boolq"]
    assert [s.name for s in resolve_tasks(["rte", "rte"])] == ["rte"]


@pytest.mark.parametrize(
    "name, match",
    [
        ("../../victim/model", "is not a valid task name"),  # a cache file name: it wrote outside --out
        ("a/b", "is not a valid task name"),
        ("my task", "is not a valid task name"),
        ("a,b", "is not a valid task name"),  # --tasks a,b could never select it
        ("", "is not a valid task name"),
        (".hidden", "is not a valid task name"),
        ("x" * 65, "is not a valid task name"),
        ("all", "is reserved"),  # --tasks all means every task
        ("wikitext", "is reserved"),  # the generic wiki set's cache entry: the profile replaced the user's task
    ],
)
def test_a_task_name_that_is_not_a_safe_file_name_or_is_reserved_is_refused_when_read(tmp_path, name, match):
    path = _task_file(tmp_path, {name: _entry(tmp_path / "tiny")})
    with pytest.raises(DietError, match=rf"task name .* in {re.escape(str(path))} {match}"):
        load_registry([path])


def test_a_task_file_task_named_like_a_builtin_or_named_twice_is_refused(tmp_path):
    path = _task_file(tmp_path, {"boolq": _entry(tmp_path / "tiny")})
    with pytest.raises(DietError, match="task 'boolq' in .*: a task of that name is built in"):
        load_registry([path])
    first = _task_file(tmp_path, {"mine": _entry(tmp_path / "tiny")}, name="a.json")
    second = _task_file(tmp_path, {"mine": _entry(tmp_path / "tiny")}, name="b.json")
    with pytest.raises(DietError, match=f"task 'mine' in {re.escape(str(second))}: a task of that name is defined in"):
        load_registry([first, second])
    twice = tmp_path / "twice.json"  # the same key twice in one file: json keeps the last one silently
    twice.write_text('{"mine": ' + json.dumps(_entry(tmp_path / "tiny")) + ', "mine": {}}')
    with pytest.raises(DietError, match="names 'mine' twice"):
        load_registry([twice])
    assert list(load_registry([first]))[-1] == "mine"  # a good name still loads


def test_names_are_compared_without_case_and_a_file_named_twice_is_read_once(tmp_path, monkeypatch):
    """BoolQ and boolq are one cache file on a case-insensitive disk; ALL bypassed the reserved check;
    the same file from DIET_EXPLORE_TASKS and --task-file conflicted with itself."""
    for name, match in (("BoolQ", r"a task of that name \('boolq'\) is built in"), ("ALL", "is reserved")):
        with pytest.raises(DietError, match=match):
            load_registry([_task_file(tmp_path, {name: _entry(tmp_path / "tiny")}, name=f"{name}.json")])
    path = _task_file(tmp_path, {"mine": _entry(tmp_path / "tiny")})
    monkeypatch.setenv("DIET_EXPLORE_TASKS", str(path))
    assert list(load_registry([path]))[-1] == "mine"


def test_a_hub_dataset_that_cannot_load_is_named_without_a_none_config(monkeypatch):
    """'could not load google/boolq/None': an unset hub_name printed as None."""
    import datasets

    from diet_explore.tasks.data import _load_split

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    _load_split.cache_clear()
    with pytest.raises(DietError, match=r"could not load someone/dataset split validation from the hub \(no network\)"):
        _load_split(None, None, "someone/dataset", None, "validation")
    with pytest.raises(DietError, match="could not load someone/dataset/cfg split validation"):
        _load_split(None, None, "someone/dataset", "cfg", "validation")
    _load_split.cache_clear()
