"""`pgenrm train ...`: train a judge on PersonalRewardBench rows, evaluate it, export it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from pgenrm_plugins.commands import err, fail
from pgenrm_plugins.hookspecs import hookimpl
from pgenrm_plugins.training.settings import CRESettings, PSISettings, ScoreSettings, StageSettings, SynthesisSettings
from pgenrm_plugins.training.stage import command_line

OUT_HELP = "Judge folder to write (LoRA adapter + pgenrm_judge.json); checkpoints in OUT/checkpoints."
BASE_HELP = "Base causal LM: 'embedded' (SmolLM2-135M-Instruct), an HF folder or id."
FRESH_HELP = "Delete OUT/checkpoints first instead of resuming."


def options_of(settings_model: type[StageSettings]):
    """Make `command(..., settings)` a typer command with one option per field of `settings_model`
    (its description the help, its bounds the checks); the command gets the validated model."""
    import inspect

    import typer
    from annotated_types import Ge, Le
    from pydantic import ValidationError

    def wrap(command):
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "settings"]
        fields = []
        for name, field in settings_model.model_fields.items():
            bounds = {("min" if isinstance(m, Ge) else "max"): (m.ge if isinstance(m, Ge) else m.le)
                      for m in field.metadata if isinstance(m, (Ge, Le))}
            fields.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=field.annotation,
                                            default=typer.Option(field.default, help=field.description, **bounds)))

        def run(**options):
            values = {name: options.pop(name) for name in settings_model.model_fields}
            try:
                settings = settings_model(**values)
            except ValidationError as exc:  # bounds typer cannot say (e.g. > 0): name the option
                fail("; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors()))
            return command(**options, settings=settings)

        params = own + fields
        run.__name__, run.__doc__ = command.__name__, command.__doc__
        run.__signature__ = inspect.Signature(params)
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return wrap


@hookimpl
def register_commands(cli):
    import typer

    train_app = typer.Typer(
        help="Train P-GenRM judges on PersonalRewardBench rows (train users) and evaluate or export them.\n\n"
             "For example:\n\n"
             "  pgenrm data synth --users 400 --seed 0 --cold-start 0 --out data/train.jsonl\n\n"
             "  pgenrm train score --data data/train.jsonl --out judges/mine --seed 0\n\n"
             "Run the same command again to resume from its newest checkpoint (docs/training.md).",
        no_args_is_help=True,
    )
    cli.add_typer(train_app, name="train")

    @contextmanager
    def exit_on_bad_input():
        """Bad data, a missing file or a bad config: one clear line and exit code 2, no traceback."""
        from pgenrm_plugins.config import ConfigError

        try:
            yield
        except (ValueError, FileNotFoundError, ConfigError) as exc:
            fail(exc)

    @train_app.command("score")
    @options_of(ScoreSettings)
    def score(
        data: Path = typer.Option(..., "--data", help="PersonalRewardBench rows; "
                                                      "the train split of each user is used."),
        out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
        base: str = typer.Option("embedded", help=BASE_HELP),
        eval_data: Optional[Path] = typer.Option(None, help="Rows of held-out users: accuracy goes into the manifest."),
        eval_rows: int = typer.Option(64, min=1),
        fresh: bool = typer.Option(False, help=FRESH_HELP),
        settings: ScoreSettings = None,
    ):
        """Train the score slot that `reward.criteria: none` reads (judge J's stage)."""
        from pgenrm_plugins.training.score_stage import train_score

        with exit_on_bad_input():
            manifest = train_score(data, out, settings, base=base, eval_data=eval_data, eval_rows=eval_rows,
                                   fresh=fresh, command=command_line())
        m = manifest["metrics"]
        err.print(f"wrote {out}: {m['steps']} steps, loss {m['first_loss']} -> {m['final_loss']}"
                  + (f", held-out accuracy {m['eval']['accuracy']:.3f} on {m['eval']['pairs']} pairs"
                     if "eval" in m else ""),
                  highlight=False)

    @train_app.command("psi")
    @options_of(PSISettings)
    def psi(
        data: Path = typer.Option(..., "--data", help="PersonalRewardBench rows; "
                                                      "each user's train rows are their history."),
        out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP + " Teacher outputs in OUT/teacher.jsonl."),
        teacher_config: Optional[Path] = typer.Option(None, "--teacher-config",
                                                      help="pgenrm config (YAML/TOML) whose `backend` is the teacher, "
                                                           "e.g. an OpenAI-compatible server with a larger model. "
                                                           "Default: the untrained embedded SmolLM2-135M "
                                                           "(rejection sampling from the judge itself)."),
        base: str = typer.Option("embedded", help="Student " + BASE_HELP),
        fresh: bool = typer.Option(False, help="Delete OUT/checkpoints first (teacher outputs are always reused)."),
        settings: PSISettings = None,
    ):
        """PSI: a teacher writes evaluation chains, those that parse and favour the user's choice are kept, SFT on them.

        For each drawn pair (a view of one user's history + another of their pairs, shown as A/B in a
        seeded random order) the teacher samples --samples chains; a chain is kept only when it parses
        and gives the response the user chose the strictly higher total. TRL's SFTTrainer then trains a
        LoRA on the kept chains. If nothing is kept the command stops with an error (exit 2) and says
        what to change. Run the same command again to resume: asked pairs are not asked again.

        Example, with a teacher behind an OpenAI-compatible server (vLLM, SGLang, llama.cpp):

          echo 'backend: {name: openai, options: {base_urls: http://127.0.0.1:8000/v1, model: M}}' > teacher.yaml

          pgenrm train psi --data data/train.jsonl --out judges/psi --teacher-config teacher.yaml

        then `pgenrm train cre --init judges/psi ...`.
        """
        from pgenrm_plugins.training.psi_stage import train_psi

        with exit_on_bad_input():
            manifest = train_psi(data, out, settings, base=base, teacher_config=teacher_config, fresh=fresh,
                                 command=command_line())
        m = manifest["metrics"]
        err.print(f"wrote {out}: kept {m['kept']} of {m['chains_sampled']} chains (keep rate {m['keep_rate']}), "
                  f"{m['steps']} SFT steps, loss {m['first_loss']} -> {m['final_loss']}", highlight=False)

    @train_app.command("cre")
    @options_of(CRESettings)
    def cre(
        data: Path = typer.Option(..., "--data", help="PersonalRewardBench rows; "
                                                      "each user's train rows are their history."),
        out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
        init: Optional[Path] = typer.Option(None, "--init", help="Continue the adapter of this judge folder (e.g. from "
                                                                 "`pgenrm train psi`), on its base and at its rank "
                                                                 "(--base, --lora-rank, --lora-layers are then "
                                                                 "ignored); default: a fresh LoRA on --base."),
        base: str = typer.Option("embedded", help="When no --init: " + BASE_HELP),
        process_config: Optional[Path] = typer.Option(None, "--process-config",
                                                      help="pgenrm config whose `backend` rates each chain's "
                                                           "preferences and criteria against the history "
                                                           "(the process reward). Default: no process reward."),
        fresh: bool = typer.Option(False, help=FRESH_HELP),
        settings: CRESettings = None,
    ):
        """CRE: GRPO on evaluation chains, rewarded for agreeing with the user's choice and for parsing.

        Reward = beta x outcome + format-weight x format (+ alpha x process with --process-config),
        combined by TRL's GRPOConfig.reward_weights. Run the same command again to resume from the
        newest checkpoint.

        Example: pgenrm train cre --data data/train.jsonl --init judges/psi --out judges/cre --steps 200

        Use the result with `backend: {name: transformers, options: {model: judges/cre}}`; its
        manifest sets reward.criteria: generated. On the untrained 135M base (no --init) almost no
        chain parses, every reward is 0 and GRPO has no gradient: start from a judge that writes chains.
        """
        from pgenrm_plugins.training.cre_stage import train_cre

        with exit_on_bad_input():
            manifest = train_cre(data, out, settings, base=base, init=init, process_config=process_config,
                                 fresh=fresh, command=command_line())
        m = manifest["metrics"]
        err.print(f"wrote {out}: {m['steps']} GRPO steps, {m['seconds_per_step']} s/step, chains parsed "
                  f"{m['format_rate_this_run']}, right {m['outcome_rate_this_run']}", highlight=False)

    @train_app.command("synthesis")
    @options_of(SynthesisSettings)
    def synthesis(
        data: Path = typer.Option(..., "--data", help="Rows from `pgenrm data synth` (the truth file beside them is "
                                                      "teacher 'stated''s privileged input); train split used."),
        out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
        base: str = typer.Option("embedded", help=BASE_HELP),
        init: Optional[Path] = typer.Option(None, "--init", help="A synthesis judge folder whose adapter this "
                                                                 "run continues (stages: checks alone with "
                                                                 "--check-share 1, then both)."),
        fresh: bool = typer.Option(False, help=FRESH_HELP),
        settings: SynthesisSettings = None,
    ):
        """The synthesis judge (the embedded default's stage): persona and weighted criteria from the history,
        learnt from teacher 'stated', and one digit per (reply, criterion). Runs on CUDA when there is one."""
        from pgenrm_plugins.training.synthesis_stage import train_synthesis

        with exit_on_bad_input():
            manifest = train_synthesis(data, out, settings, base=base, init=init, fresh=fresh,
                                       command=command_line())
        m = manifest["metrics"]
        err.print(f"wrote {out}: {m['steps']} steps on {m['device']}, loss {m['first_loss']} -> {m['final_loss']} "
                  f"(last logged: synthesis {m.get('final_synthesis_loss')}, check {m.get('final_check_loss')})",
                  highlight=False)

    @train_app.command("eval")
    def evaluate_cmd(
        judge: Path = typer.Option(..., "--judge", help="A judge folder from `pgenrm train`."),
        data: Path = typer.Option(..., "--data", help="Rows of held-out users "
                                                      "(train rows = history, test rows scored)."),
        rows: int = typer.Option(64, min=1, help="Test rows to score."),
        chains: int = typer.Option(1, min=1, help="History views per judgement (Ind-N)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
    ):
        """Pairwise accuracy of a judge on held-out users (quick check; `pgenrm bench accuracy` is the full one).
        A synthesis judge is measured step by step: synthesis recovery, the check step alone, its ceiling (the
        teacher's synthesis), the whole vocabulary verified on the user's own pairs, end to end."""
        import json

        from pgenrm_plugins.backends.judge_folder import read_manifest
        from pgenrm_plugins.training.evaluate import evaluate

        manifest = read_manifest(judge)
        if manifest is not None and manifest.criteria == "synthesis":
            from pgenrm_plugins.training.synthesis_eval import evaluate_synthesis

            with exit_on_bad_input():
                result = evaluate_synthesis(judge, data, max_rows=rows)
            rec = result["recovery"]
            err.print(f"end to end {result['end_to_end']:.3f}, ceiling (teacher's synthesis) {result['ceiling']:.3f}, "
                      f"vocabulary verified on the user's pairs {result['vocabulary']:.3f} "
                      f"on {result['pairs']} pairs; synthesis recovery {rec['agreement']} "
                      f"({rec.get('agree', 0)} of {rec.get('claimed', 0)} claims on the right side, "
                      f"{rec.get('wrong_side', 0)} wrong side, {rec.get('missed', 0)} missed, "
                      f"{rec.get('unsupported', 0)} unsupported, {rec.get('unparsed', 0)} unparsed)", highlight=False)
            c = result["checks"]
            err.print(f"checks: {c['accuracy']:.3f} right of {c['asked']} (mean digit met {c['mean_digit_met']}, "
                      f"unmet {c['mean_digit_unmet']})", highlight=False)
            for group, g in result["by_group"].items():
                err.print(f"  {group}: end to end {g['end_to_end']:.3f}, ceiling {g['ceiling']:.3f}, "
                          f"vocabulary {g['vocabulary']:.3f} ({g['pairs']} pairs)", highlight=False)
            if json_out:
                json_out.write_text(json.dumps(result, indent=1))
            return
        result = evaluate(judge, data, max_rows=rows, chains=chains)
        if json_out:
            json_out.write_text(json.dumps(result, indent=1))
        err.print(f"accuracy {result['accuracy']:.3f} on {result['pairs']} pairs "
                  f"(mean margin {result['mean_margin']:+.4f})",
                  highlight=False)

    @train_app.command("export")
    def export(
        judge: Path = typer.Option(..., "--judge", help="A judge folder from `pgenrm train` (LoRA adapter)."),
        to: Path = typer.Option(..., "--to", help="Folder for the merged model: serve it with vLLM or SGLang by path, "
                                                  "or convert it with llama.cpp's convert_hf_to_gguf.py."),
    ):
        """Merge the adapter into its base and write a plain HF model folder."""
        from pgenrm_plugins.backends.judge_folder import export_merged

        export_merged(judge, to)
        err.print(f"wrote {to}", highlight=False)
