"""Long runs keep their work: `pgenrm score` killed with SIGKILL and rerun gives the file one
uninterrupted run gives, scoring only the missing lines; a resumed run with other settings or
another input refuses and names the difference; `pgenrm bench accuracy` interrupted and rerun gives
the same report. All on the real embedded judge, with few, short requests."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import make_config, without_work_counters
from typer.testing import CliRunner

from pgenrm_plugins import cli
from pgenrm_plugins.bench.accuracy import AccuracyError, run_accuracy
from pgenrm_plugins.datasets.synthetic import generate, write_bench
from pgenrm_plugins.requests_io import InOrder, complete_lines, run_record_path

runner = CliRunner()
CONFIG = "sampling: {chains: 1, max_new_tokens: 32}\nreward: {max_chars: 200}\n"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One thread, as the killed subprocess has (OMP_NUM_THREADS=1): the same arithmetic in both, so
    their rewards can be compared exactly. The setting is restored for the next module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _close(a, b, tol: float = 1e-6) -> bool:
    """Equal JSON values, floats within `tol`."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    return a == b


def _requests(n: int) -> list[str]:
    people = ["brief-bea", "story-sam", "list-lou"]
    return [json.dumps({
        "user_id": people[i % 3],
        "history": [{"prompt": "Name a cat.", "chosen": "Miso.", "rejected": "Names are personal; many pick food."}],
        "prompt": f"Question {i}: how can I sleep better?",
        "completions": ["Fixed bedtime.", f"Sleep is complicated ({i}).", "No screens after nine."],
    }) for i in range(n)]


def _score(*args: str):
    return runner.invoke(cli.app, ["score", *args], terminal_width=200)


def test_in_order_writer_holds_a_line_until_the_lines_above_it_are_written(tmp_path):
    with open(tmp_path / "out.jsonl", "w") as f:
        writer = InOrder(f, next_index=2)
        writer.put({3: "three\n"})
        assert writer.waiting == {3: "three\n"} and (tmp_path / "out.jsonl").read_text() == ""
        writer.put({2: "two\n", 4: "four\n"})
        assert writer.waiting == {} and writer.next == 5
    assert (tmp_path / "out.jsonl").read_text() == "two\nthree\nfour\n"


def test_complete_lines_cuts_a_torn_last_line_and_refuses_a_bad_middle_one(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"rewards": [0.4')
    assert complete_lines(path) == 2 and path.read_text() == '{"a": 1}\n{"a": 2}\n'
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3}')  # valid JSON, but no newline: the writer was cut off
    assert complete_lines(path) == 2
    path.write_text('{"a": 1}\n{"a"\n{"a": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        complete_lines(path)


def test_killed_score_resumes_to_the_file_of_one_uninterrupted_run(tmp_path):
    lines = _requests(8)
    lines.insert(3, "{not json")  # a bad line waits in the reorder buffer for the batch above it
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    out = tmp_path / "out.jsonl"
    args = ["-i", str(tmp_path / "in.jsonl"), "-c", str(tmp_path / "cfg.yaml"), "--batch-size", "2"]

    # Kill the real command once its first batches are on disk.
    proc = subprocess.Popen([sys.executable, "-m", "pgenrm_plugins.cli", "score", *args, "-o", str(out)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out.is_file() and out.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no line written in 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = out.read_text().count("\n")
    assert 2 <= kept < 9, "the run finished before it was killed: nothing left to resume"
    with open(out, "a") as f:
        f.write('{"rewards": [0.41')  # what a kill in the middle of a write leaves

    resumed = _score(*args, "-o", str(out))
    assert resumed.exit_code == 1, resumed.output  # 1: the bad line, as in any run
    assert f"{kept} of 9 lines already scored, scoring the other {9 - kept}" in resumed.output
    missing = sum(1 for line in lines[kept:] if line != "{not json")
    assert f"scored {missing} requests" in resumed.output  # only the missing ones

    whole = _score(*args, "-o", str(tmp_path / "whole.jsonl"))
    assert whole.exit_code == 1 and "scored 8 requests" in whole.output
    got, want = out.read_text().splitlines(), (tmp_path / "whole.jsonl").read_text().splitlines()
    assert len(got) == len(want) == 9
    # Same rewards, same components. Only the work counters may differ, where the resumed run wrote a
    # synthesis again that the uninterrupted one had reused (the cache lives in the process), and the
    # rewards in their last digits (1e-8): a synthesis's checks are then batched with other rows.
    parse = lambda lines: [without_work_counters(json.loads(line)) for line in lines]  # noqa: E731
    assert _close(parse(got), parse(want))
    assert json.loads(got[3]) == {"line": 4, "error": json.loads(got[3])["error"]}

    again = _score(*args, "-o", str(out))  # finished: nothing to score, the file unchanged
    assert "scored 0 requests" in again.output and out.read_text().splitlines() == got


def test_resume_refuses_other_settings_or_input_and_restart_starts_over(tmp_path):
    (tmp_path / "in.jsonl").write_text(_requests(1)[0] + "\n")
    (tmp_path / "other.jsonl").write_text(_requests(2)[1] + "\n")
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    (tmp_path / "more.yaml").write_text(CONFIG.replace("chains: 1", "chains: 2"))
    out = str(tmp_path / "out.jsonl")
    first = _score("-i", str(tmp_path / "in.jsonl"), "-c", str(tmp_path / "cfg.yaml"), "-o", out)
    assert first.exit_code == 0, first.output
    record = json.loads(run_record_path(out).read_text())
    assert record["input_sha256"] and record["settings"]["sampling"]["chains"] == 1

    other = _score("-i", str(tmp_path / "in.jsonl"), "-c", str(tmp_path / "more.yaml"), "-o", out)
    assert other.exit_code == 2 and "sampling.chains: 1 -> 2" in other.output and "--restart" in other.output
    moved = _score("-i", str(tmp_path / "other.jsonl"), "-c", str(tmp_path / "cfg.yaml"), "-o", out)
    assert moved.exit_code == 2 and "another input" in moved.output and "in.jsonl" in moved.output

    restarted = _score("-i", str(tmp_path / "in.jsonl"), "-c", str(tmp_path / "more.yaml"), "-o", out, "--restart")
    assert restarted.exit_code == 0 and "scored 1 requests" in restarted.output
    assert json.loads(open(out).readline())["components"]["chains_sampled"] >= 2

    run_record_path(out).unlink()  # a file this command did not write is never appended to
    unknown = _score("-i", str(tmp_path / "in.jsonl"), "-c", str(tmp_path / "more.yaml"), "-o", out)
    assert unknown.exit_code == 2 and "out.jsonl.run.json" in unknown.output


class Interrupted(Exception):
    pass


class InterruptedJudge:
    """The session's judge, stopped (as a killed job is) at its first call once `batches` judged
    batches are in progress.jsonl."""

    def __init__(self, judge, progress, batches: int):
        self.judge, self.progress, self.batches = judge, progress, batches

    def __getattr__(self, name):
        return getattr(self.judge, name)

    def _check(self):
        if self.progress.is_file() and self.progress.read_text().count("\n") >= self.batches:
            raise Interrupted

    def generate(self, requests):
        self._check()
        return self.judge.generate(requests)

    def next_token_probs(self, conversations, candidates):
        self._check()
        return self.judge.next_token_probs(conversations, candidates)


def _same_result(report: dict) -> dict:
    """What a report says about the judgements, without this run's timing and cache counters."""
    per_run = {"seconds", "new_chains", "new_probability_reads", "new_generated_tokens"}
    return {"settings": {name: {k: v for k, v in s.items() if k not in per_run}
                         for name, s in report["settings"].items()},
            "references": report["references"], "test_rows": report["test_rows"]}


def test_interrupted_accuracy_run_resumes_per_setting_and_row(judge, tmp_path):
    bench = generate(n_users=3, rows_per_user=3, seed=5, test_per_user=1, cold_start_fraction=0.34)
    rows, _ = write_bench(tmp_path / "rows.jsonl", bench)
    tiny = make_config(sampling={"chains": 1, "max_new_tokens": 24}, reward={"max_history": 2, "max_chars": 240})
    grid = {"config": tiny, "settings": ["no-history", "ind-1"], "batch_rows": 1}  # 3 test rows: 3 batches each

    whole = run_accuracy(rows, tmp_path / "whole", backend=judge, **grid)

    resumed_dir = tmp_path / "resumed"  # its own judge cache: the judge really works again
    with pytest.raises(Interrupted):
        run_accuracy(rows, resumed_dir, backend=InterruptedJudge(judge, resumed_dir / "progress.jsonl", 4), **grid)
    with open(resumed_dir / "progress.jsonl", "a") as f:
        f.write('{"setting": "ind-1", "start": 1, "rec')  # a batch cut off by the kill
    resumed = run_accuracy(rows, resumed_dir, backend=judge, **grid)
    # no-history finished before the interruption, ind-1 had judged its first row
    assert resumed["resumed_rows"] == {"no-history": 3, "ind-1": 1}
    assert _same_result(resumed) == _same_result(whole)
    assert "read back from progress.jsonl" in (resumed_dir / "report.md").read_text()

    other = {**grid, "config": make_config(sampling={"chains": 1, "max_new_tokens": 16},
                                           reward={"max_history": 2, "max_chars": 240})}
    with pytest.raises(AccuracyError, match="sampling.max_new_tokens: 24 -> 16"):
        run_accuracy(rows, resumed_dir, backend=judge, **other)
    again = run_accuracy(rows, resumed_dir, backend=judge, restart=True, **grid)  # answered by the judge cache
    assert again["resumed_rows"] == {"no-history": 0, "ind-1": 0} and again["cache"]["chain_misses"] == 0
    assert _same_result(again) == _same_result(whole)
