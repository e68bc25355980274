"""Reading a user's fields out of a framework's per-sample data (`frameworks/user_fields.py`):
every shape a dataset may hold, and errors that name the column and the fix."""

import json
import math

import numpy as np
import pytest

from pgenrm_plugins.frameworks.user_fields import (
    FieldSource,
    UserFieldError,
    completion_text,
    read_container,
    read_history,
    read_prompt,
    read_user_fields,
    read_user_id,
)

HISTORY = [{"prompt": "What is a good name for a cat?", "chosen": "Miso.", "rejected": "Names are personal!"}]
LABEL = FieldSource(framework="OpenRLHF", container="label", strict=True, fix="--data.label_key label")
EXTRA_INFO = FieldSource(framework="verl", container="extra_info", fix="give each row an extra_info dict")


def test_history_shapes_a_dataset_may_hold():
    assert read_history(None) == [] and read_history("") == [] and read_history("[]") == []
    assert read_history(math.nan) == []  # pandas' missing value
    assert read_history(json.dumps(HISTORY)) == HISTORY
    # how `datasets` decodes a Sequence of structs: a dict of lists
    columnar = {k: [HISTORY[0][k]] for k in ("prompt", "chosen", "rejected")}
    assert read_history(columnar) == HISTORY
    assert read_history(np.array(HISTORY, dtype=object)) == HISTORY  # verl's non_tensor_batch
    # PersonalRewardBench style: `context` messages, {role, content} answers, extra fields
    bench = [{"context": [{"role": "user", "content": "Hi"}], "chosen": {"role": "assistant", "content": "Hey."},
              "rejected": {"role": "assistant", "content": "Greetings, dear user."}, "chosen_score": 5,
              "split": "train"}]
    assert read_history(bench) == [{"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hey.",
                                    "rejected": "Greetings, dear user."}]
    for bad in ("{not json", 42, [1, 2], {"prompt": ["a"], "chosen": []}):
        with pytest.raises(ValueError):
            read_history(bad)


def test_a_history_item_missing_a_side_names_the_item_and_the_field():
    with pytest.raises(ValueError, match=r"item 0: field 'rejected'"):
        read_history([{"prompt": "x", "chosen": "y"}])


def test_user_ids_strings_numbers_and_anonymous():
    assert read_user_id("u1") == "u1" and read_user_id(7) == "7" and read_user_id(7.0) == "7"
    assert read_user_id(np.int64(3)) == "3" and read_user_id(None) is None and read_user_id(math.nan) is None
    for bad in (True, [1], {"id": 1}):
        with pytest.raises(ValueError, match="expected a string or a number"):
            read_user_id(bad)


def test_prompts_and_completions_in_every_shape():
    assert read_prompt("Hi") == "Hi"
    # model/human roles become assistant/user; a tool turn becomes a labelled user turn
    assert read_prompt([{"role": "human", "content": "Hi"}, {"role": "tool", "content": "42"}]) == [
        {"role": "user", "content": "Hi"}, {"role": "user", "content": "[tool] 42"}]
    blocks = [{"role": "user",
               "content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]}]
    assert read_prompt(blocks) == [{"role": "user", "content": "ab"}]
    with pytest.raises(ValueError, match="expected a string or a list of messages"):
        read_prompt(3)
    assert completion_text([{"role": "assistant", "content": "one"},
                            {"role": "assistant", "content": "two"}]) == "one\ntwo"
    assert completion_text({"role": "assistant", "content": "x"}) == "x" and completion_text(None) == ""


def test_containers_json_or_dict_and_strict_keys():
    assert read_container(json.dumps({"user_id": "u1"}), LABEL) == {"user_id": "u1"}
    assert read_container({"user_id": "u1", "index": 3}, EXTRA_INFO)["index"] == 3  # not strict: extra keys kept
    with pytest.raises(UserFieldError, match=r"OpenRLHF: column 'label': unknown keys \['histroy'\]") as info:
        read_container({"user_id": "u1", "histroy": []}, LABEL)
    assert info.value.column == "label" and "Fix: --data.label_key label" in str(info.value)
    with pytest.raises(UserFieldError, match="not valid JSON"):
        read_container("{oops", LABEL)
    with pytest.raises(UserFieldError, match="is missing"):
        read_container(None, EXTRA_INFO)


def test_user_fields_make_the_core_request_and_name_the_column_on_errors():
    fields = read_user_fields({"user_id": 5, "history": json.dumps(HISTORY), "persona": "Brief."}, EXTRA_INFO)
    request = fields.request(["Keep a fixed bedtime."], prompt="How can I sleep better?")
    assert (request.user_id, request.persona, request.completions) == ("5", "Brief.", ["Keep a fixed bedtime."])
    assert request.history[0].chosen == "Miso."
    with pytest.raises(UserFieldError, match=r"verl: column 'extra_info.user_id': missing \(keys present: history\)"):
        read_user_fields({"history": HISTORY}, EXTRA_INFO)
    with pytest.raises(UserFieldError, match=r"column 'extra_info.history': item 0: field 'rejected'"):
        read_user_fields({"user_id": "u1", "history": [{"prompt": "x", "chosen": "y"}]}, EXTRA_INFO)
    with pytest.raises(UserFieldError, match=r"column 'extra_info.prompt': no prompt"):
        read_user_fields({"user_id": "u1"}, EXTRA_INFO).request(["x"])
    # the sample's own prompt wins over the framework's
    own = read_user_fields({"user_id": "u1", "prompt": "Mine"}, EXTRA_INFO).request(["x"], prompt="Theirs")
    assert own.prompt == "Mine"
