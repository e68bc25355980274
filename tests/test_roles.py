"""Role aliases: PRISM-derived and Gemini-style data call the model's turn `model` (ShareGPT `gpt`,
others `bot`, `chatbot`) and the user `human`. Every reader of rows and requests accepts them,
case-insensitively, as `assistant` / `user`; any other role is still refused by line and field."""

from __future__ import annotations

import json

import pytest
from prototype_helpers import load_embedder, make_rows, write_jsonl
from pydantic import ValidationError
from typer.testing import CliRunner

from pgenrm_plugins import cli
from pgenrm_plugins.commands import prototypes as commands
from pgenrm_plugins.datasets.bench import load_bench, read_bench_rows
from pgenrm_plugins.prototypes.sqlite_store import SQLiteStore
from pgenrm_plugins.requests_io import LineError, read_requests
from pgenrm_plugins.types import HistoryItem, Message, ScoreRequest, as_messages

ALLOWED = "Input should be 'system', 'user' or 'assistant'"
MODEL_ROLES = ["model", "gpt", "bot", "chatbot", "Model", "GPT", "ChatBot"]


@pytest.mark.parametrize("role, expected", [
    *[(r, "assistant") for r in MODEL_ROLES],
    ("human", "user"), ("Human", "user"), ("HUMAN", "user"), (" human ", "user"),
    ("User", "user"), ("ASSISTANT", "assistant"), ("System", "system"),
])
def test_message_normalises_role_aliases(role, expected):
    assert Message.model_validate({"role": role, "content": "hi"}).role == expected


@pytest.mark.parametrize("role", ["robot", "tool", "modeler", "", None, 3])
def test_other_roles_are_still_refused(role):
    with pytest.raises(ValidationError) as refused:
        Message.model_validate({"role": role, "content": "hi"})
    assert refused.value.errors()[0]["loc"] == ("role",)
    if isinstance(role, str):
        assert ALLOWED in str(refused.value)


def prism_rows(n_brief: int = 2, n_long: int = 2, train: int = 2) -> list[dict]:
    """make_rows' users, written the way PRISM-derived / Gemini-style exports spell the roles: a
    two-turn context (human, model, human) and every alias for the model's side."""
    rows = make_rows(n_brief, n_long, train=train)
    for i, row in enumerate(rows):
        question = row["context"][0]["content"]
        row["context"] = [{"role": "human", "content": "Hello!"},
                          {"role": MODEL_ROLES[i % len(MODEL_ROLES)], "content": "Hi, how can I help?"},
                          {"role": "Human" if i % 2 else "human", "content": question}]
        row["chosen"]["role"] = MODEL_ROLES[(i + 1) % len(MODEL_ROLES)]
        row["rejected"]["role"] = MODEL_ROLES[(i + 2) % len(MODEL_ROLES)]
    return rows


def test_bench_rows_with_aliases_load_and_normalise(tmp_path):
    rows = prism_rows()
    items = list(read_bench_rows(write_jsonl(tmp_path / "rows.jsonl", rows)))
    assert not [i for i in items if isinstance(i, LineError)]
    assert len(items) == len(rows)
    for item in items:
        assert [m.role for m in item.context] == ["user", "assistant", "user"]
        assert item.chosen.role == item.rejected.role == "assistant"
    data = load_bench(tmp_path / "rows.jsonl", strict=True)
    history = data.histories()["brief-0"]
    assert [m.role for m in history[0].prompt] == ["user", "assistant", "user"]


def test_parquet_rows_with_aliases(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = prism_rows(1, 1, train=1)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    items = list(read_bench_rows(tmp_path / "rows.parquet"))
    assert len(items) == 4 and not [i for i in items if isinstance(i, LineError)]
    assert {m.role for i in items for m in [*i.context, i.chosen, i.rejected]} == {"user", "assistant"}


def test_a_robot_row_names_its_line_and_field(tmp_path):
    rows = prism_rows(1, 1, train=1)
    rows[2]["chosen"]["role"] = "robot"
    rows[3]["context"][1]["role"] = "Robot"
    items = list(read_bench_rows(write_jsonl(tmp_path / "rows.jsonl", rows)))
    errors = {i.line: i.message for i in items if isinstance(i, LineError)}
    assert errors == {3: f"field 'chosen.role': {ALLOWED}", 4: f"field 'context.1.role': {ALLOWED}"}


def test_requests_with_aliases(tmp_path):
    request = {
        "user_id": "u1",
        "history": [{"prompt": [{"role": "human", "content": "How do I boil an egg?"}],
                     "chosen": "Boil it 9 minutes.", "rejected": "It depends."}],
        "prompt": [{"role": "System", "content": "Be brief."}, {"role": "human", "content": "Hi"},
                   {"role": "model", "content": "Hello."}, {"role": "HUMAN", "content": "How do I sleep?"}],
        "completions": ["Fixed bedtime."],
    }
    robot = {**request, "prompt": [{"role": "robot", "content": "beep"}]}
    path = tmp_path / "requests.jsonl"
    path.write_text(json.dumps(request) + "\n" + json.dumps(robot) + "\n")
    good, bad = list(read_requests(path))
    assert isinstance(good, ScoreRequest)
    assert [m.role for m in good.prompt] == ["system", "user", "assistant", "user"]
    assert [m.role for m in good.history[0].prompt] == ["user"]
    assert isinstance(bad, LineError) and bad.line == 2 and "prompt" in bad.message and ALLOWED in bad.message
    # the helpers that build messages from dicts go through the same validator
    assert [m.role for m in as_messages([{"role": "gpt", "content": "x"}])] == ["assistant"]
    item = HistoryItem.model_validate({"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"})
    assert item.prompt[0].role == "assistant"


# -- the CLI ---------------------------------------------------------------------------------------
runner = CliRunner()
if not any(group.name == "prototypes" for group in cli.app.registered_groups):
    cli.plugins.register_commands(cli.app)  # what `pgenrm` does at start-up


@pytest.fixture
def embedder(monkeypatch):
    embedder = load_embedder()  # the real embedder, loaded once for the file instead of once per command
    monkeypatch.setattr(commands, "_embedder", lambda config: embedder)
    return embedder


def test_cli_builds_prototypes_from_aliased_rows(tmp_path, embedder):
    rows = write_jsonl(tmp_path / "rows.jsonl", prism_rows())
    store = str(tmp_path / "protos.sqlite")
    result = runner.invoke(cli.app, ["prototypes", "build", "--data", rows, "--store", store, "--skip-judge",
                                     "--k", "2", "--epochs", "2"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "published build" in result.output and "4 users in 2 prototypes" in result.output
    assert "skipped" not in result.output and "bad row" not in result.output
    s = SQLiteStore(path=store)
    try:
        users = list(s.users())
        assert len(users) == 4 and all(len(u.history) == 2 for u in users)
        assert {m.role for u in users for h in u.history for m in h.prompt} == {"user", "assistant"}
    finally:
        s.close()


def test_cli_refuses_a_robot_row_by_line_and_field(tmp_path, embedder):
    rows = prism_rows()
    rows[2]["chosen"]["role"] = "robot"  # line 3: a test row, so every user keeps their train rows
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    store = str(tmp_path / "protos.sqlite")
    result = runner.invoke(cli.app, ["prototypes", "build", "--data", path, "--store", store, "--skip-judge",
                                     "--k", "2", "--strict"], terminal_width=200)
    assert result.exit_code == 2, result.output
    assert f"line 3: field 'chosen.role': {ALLOWED}" in result.output
    # without --strict the row is skipped with the same message and the others are built
    result = runner.invoke(cli.app, ["prototypes", "build", "--data", path, "--store", store, "--skip-judge",
                                     "--k", "2", "--epochs", "2"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"line 3: field 'chosen.role': {ALLOWED}" in result.output and "1 bad row(s) skipped" in result.output


def test_framework_fields_normalise_the_aliases_too():
    """The adapters read prompts and completions through user_fields, not through Message alone."""
    from pgenrm_plugins.frameworks.user_fields import completion_text, read_messages

    assert read_messages([{"role": "human", "content": "Hi"}, {"role": "model", "content": "Hello"}]) == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert completion_text([{"role": "gpt", "content": "Sure."}, {"role": "Human", "content": "ok"}]) == "Sure."
