"""`pgenrm train ...`: train a judge on PersonalRewardBench rows, evaluate it, export it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from pgenrm_plugins.commands import err, fail
from pgenrm_plugins.hookspecs import hookimpl


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
    def score(
        data: Path = typer.Option(..., "--data", help="PersonalRewardBench rows; "
                                                      "the train split of each user is used."),
        out: Path = typer.Option(..., "--out", "-o", help="Judge folder to write (LoRA adapter + pgenrm_judge.json); "
                                                          "checkpoints in OUT/checkpoints."),
        base: str = typer.Option("embedded", help="Base causal LM: 'embedded' (SmolLM2-135M-Instruct), "
                                                  "an HF folder or id."),
        steps: int = typer.Option(600, min=1, help="Optimizer steps."),
        grad_accum: int = typer.Option(4, min=1, help="Items (one history view + its candidates) per optimizer step."),
        learning_rate: float = typer.Option(3e-4, help="LoRA learning rate (cosine schedule)."),
        lora_rank: int = typer.Option(16, min=1),
        lora_layers: int = typer.Option(12, min=1, help="LoRA on the top N decoder layers."),
        history_pairs: int = typer.Option(3, min=1, help="History pairs in a view (set reward.max_history to this)."),
        targets: int = typer.Option(2, min=1, help="Pairs scored after one view."),
        max_chars: int = typer.Option(600, min=64, help="Each text cut to this (set reward.max_chars to this)."),
        history_render: str = typer.Option("full", help="History pairs 'full' or 'contrast' (only where chosen and "
                                                         "rejected differ); becomes the judge's "
                                                         "reward.history_render."),
        compare: bool = typer.Option(False, help="Train comparisons (reply A against reply B, both orders) instead of "
                                                 "single replies; becomes the judge's reward.compare."),
        seed: int = typer.Option(0),
        threads: Optional[int] = typer.Option(None, min=1, help="torch CPU threads."),
        eval_data: Optional[Path] = typer.Option(None, help="Rows of held-out users: accuracy goes into the manifest."),
        eval_rows: int = typer.Option(64, min=1),
        fresh: bool = typer.Option(False, help="Delete OUT/checkpoints first instead of resuming."),
    ):
        """Train the score slot that `reward.criteria: none` reads (the CPU default's stage)."""
        from pgenrm_plugins.training.run import command_line, train_score

        with exit_on_bad_input():
            manifest = train_score(data, out, base=base, steps=steps, grad_accum=grad_accum,
                                   learning_rate=learning_rate, lora_rank=lora_rank, lora_layers=lora_layers,
                                   history_pairs=history_pairs, targets=targets, max_chars=max_chars,
                                   history_render=history_render, compare=compare, seed=seed, threads=threads,
                                   eval_data=eval_data, eval_rows=eval_rows, fresh=fresh, command=command_line())
        m = manifest["metrics"]
        err.print(f"wrote {out}: {m['steps']} steps, loss {m['first_loss']} -> {m['final_loss']}"
                  + (f", held-out accuracy {m['eval']['accuracy']:.3f} on {m['eval']['pairs']} pairs"
                     if "eval" in m else ""),
                  highlight=False)

    @train_app.command("psi")
    def psi(
        data: Path = typer.Option(..., "--data", help="PersonalRewardBench rows; "
                                                      "each user's train rows are their history."),
        out: Path = typer.Option(..., "--out", "-o", help="Judge folder to write (LoRA adapter + pgenrm_judge.json); "
                                                          "teacher outputs in OUT/teacher.jsonl, "
                                                          "checkpoints in OUT/checkpoints."),
        teacher_config: Optional[Path] = typer.Option(None, "--teacher-config",
                                                      help="pgenrm config (YAML/TOML) whose `backend` is the teacher, "
                                                           "e.g. an OpenAI-compatible server with a larger model. "
                                                           "Default: the untrained embedded SmolLM2-135M "
                                                           "(rejection sampling from the judge itself)."),
        base: str = typer.Option("embedded", help="Student base causal LM: 'embedded' (SmolLM2-135M-Instruct), "
                                                  "an HF folder or id."),
        pairs: int = typer.Option(32, min=1, help="(history view, A/B pair) prompts the teacher is asked about."),
        samples: int = typer.Option(8, min=1, help="Chains sampled per pair (temperature --teacher-temperature)."),
        teacher_max_new_tokens: int = typer.Option(384, min=16, help="Token budget of one chain; a chain cut off "
                                                                      "before its closing brace does not parse."),
        teacher_temperature: float = typer.Option(0.9, min=0.0, help="Teacher sampling temperature "
                                                                     "(the paper: 0.9-1.0)."),
        teacher_batch: int = typer.Option(4, min=1, help="Pairs per teacher call; "
                                                         "each call is saved to OUT/teacher.jsonl."),
        chain_text: str = typer.Option("parsed", help="What the student learns: 'parsed' (the kept chain "
                                                      "as the parser read it, in the prompt's exact JSON) "
                                                      "or 'raw' (the teacher's text)."),
        steps: int = typer.Option(60, min=1, help="SFT optimizer steps."),
        grad_accum: int = typer.Option(4, min=1, help="Kept chains per optimizer step."),
        learning_rate: float = typer.Option(2e-4, help="LoRA learning rate (cosine schedule)."),
        lora_rank: int = typer.Option(16, min=1),
        lora_layers: int = typer.Option(12, min=1, help="LoRA on the top N decoder layers."),
        history_pairs: int = typer.Option(3, min=1, help="History pairs in a view "
                                                         "(becomes the judge's reward.max_history)."),
        max_chars: int = typer.Option(600, min=64, help="Each text cut to this "
                                                        "(becomes the judge's reward.max_chars)."),
        save_steps: int = typer.Option(10, min=1, help="Checkpoint every N steps."),
        seed: int = typer.Option(0),
        threads: Optional[int] = typer.Option(None, min=1, help="torch CPU threads "
                                                                "(on a busy machine, 1 is often fastest)."),
        fresh: bool = typer.Option(False, help="Delete OUT/checkpoints first (teacher outputs are always reused)."),
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
        from pgenrm_plugins.training.chain_stages import train_psi
        from pgenrm_plugins.training.run import command_line

        with exit_on_bad_input():
            manifest = train_psi(data, out, base=base, teacher_config=teacher_config, pairs=pairs, samples=samples,
                                 teacher_max_new_tokens=teacher_max_new_tokens, teacher_temperature=teacher_temperature,
                                 teacher_batch=teacher_batch, chain_text=chain_text, steps=steps, grad_accum=grad_accum,
                                 learning_rate=learning_rate, lora_rank=lora_rank, lora_layers=lora_layers,
                                 history_pairs=history_pairs, max_chars=max_chars, save_steps=save_steps, seed=seed,
                                 threads=threads, fresh=fresh, command=command_line())
        m = manifest["metrics"]
        err.print(f"wrote {out}: kept {m['kept']} of {m['chains_sampled']} chains (keep rate {m['keep_rate']}), "
                  f"{m['steps']} SFT steps, loss {m['first_loss']} -> {m['final_loss']}", highlight=False)

    @train_app.command("cre")
    def cre(
        data: Path = typer.Option(..., "--data", help="PersonalRewardBench rows; "
                                                      "each user's train rows are their history."),
        out: Path = typer.Option(..., "--out", "-o", help="Judge folder to write (LoRA adapter + pgenrm_judge.json); "
                                                          "checkpoints in OUT/checkpoints."),
        init: Optional[Path] = typer.Option(None, "--init", help="Continue the adapter of this judge folder (e.g. from "
                                                                 "`pgenrm train psi`), on its base and at its rank "
                                                                 "(--base, --lora-rank, --lora-layers are then "
                                                                 "ignored); default: a fresh LoRA on --base."),
        base: str = typer.Option("embedded", help="Base causal LM when no --init: 'embedded' "
                                                  "(SmolLM2-135M-Instruct), an HF folder or id."),
        process_config: Optional[Path] = typer.Option(None, "--process-config",
                                                      help="pgenrm config whose `backend` rates each chain's "
                                                           "preferences and criteria against the history "
                                                           "(the process reward). Default: no process reward."),
        pairs: int = typer.Option(64, min=1, help="Distinct (history view, A/B pair) prompts."),
        steps: int = typer.Option(50, min=1, help="GRPO steps."),
        num_generations: int = typer.Option(4, min=2, help="Chains sampled per prompt (the GRPO group)."),
        prompts_per_step: int = typer.Option(1, min=1, help="Prompts per step (batch = this x --num-generations)."),
        max_completion_length: int = typer.Option(384, min=8, help="Token budget of one chain."),
        temperature: float = typer.Option(0.9, min=0.0),
        learning_rate: float = typer.Option(5e-5),
        beta: float = typer.Option(1.0, help="Outcome reward weight: 1 when the chosen response gets the strictly "
                                             "higher total."),
        format_weight: float = typer.Option(0.25, help="Format reward weight: 1 when the chain parses."),
        alpha: float = typer.Option(0.5, help="Process reward weight (only with --process-config)."),
        kl_beta: float = typer.Option(0.0, help="GRPO KL coefficient (0: no reference model)."),
        prefill: bool = typer.Option(True, help="Start every chain with the scoring prefill, as the judge does at "
                                                "scoring time."),
        lora_rank: int = typer.Option(16, min=1),
        lora_layers: int = typer.Option(12, min=1, help="LoRA on the top N decoder layers."),
        history_pairs: int = typer.Option(3, min=1, help="History pairs in a view "
                                                         "(becomes the judge's reward.max_history)."),
        max_chars: int = typer.Option(600, min=64, help="Each text cut to this "
                                                        "(becomes the judge's reward.max_chars)."),
        save_steps: int = typer.Option(10, min=1, help="Checkpoint every N steps."),
        seed: int = typer.Option(0),
        threads: Optional[int] = typer.Option(None, min=1, help="torch CPU threads "
                                                                "(on a busy machine, 1 is often fastest)."),
        fresh: bool = typer.Option(False, help="Delete OUT/checkpoints first instead of resuming."),
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
        from pgenrm_plugins.training.chain_stages import train_cre
        from pgenrm_plugins.training.run import command_line

        with exit_on_bad_input():
            manifest = train_cre(data, out, base=base, init=init, process_config=process_config, pairs=pairs,
                                 steps=steps, num_generations=num_generations, prompts_per_step=prompts_per_step,
                                 max_completion_length=max_completion_length, temperature=temperature,
                                 learning_rate=learning_rate, kl_beta=kl_beta, alpha=alpha, beta=beta,
                                 format_weight=format_weight, prefill=prefill, lora_rank=lora_rank,
                                 lora_layers=lora_layers, history_pairs=history_pairs, max_chars=max_chars,
                                 save_steps=save_steps, seed=seed, threads=threads, fresh=fresh, command=command_line())
        m = manifest["metrics"]
        err.print(f"wrote {out}: {m['steps']} GRPO steps, {m['seconds_per_step']} s/step, chains parsed "
                  f"{m['format_rate_this_run']}, right {m['outcome_rate_this_run']}", highlight=False)

    @train_app.command("synthesis")
    def synthesis(
        data: Path = typer.Option(..., "--data", help="Rows from `pgenrm data synth` (the truth file beside them is "
                                                      "teacher 'stated''s privileged input); train split used."),
        out: Path = typer.Option(..., "--out", "-o", help="Judge folder to write (LoRA adapter + pgenrm_judge.json); "
                                                          "checkpoints in OUT/checkpoints."),
        base: str = typer.Option("embedded", help="Base causal LM: 'embedded' (SmolLM2-135M-Instruct), "
                                                  "an HF folder or id."),
        steps: int = typer.Option(600, min=1, help="Optimizer steps."),
        batch_size: int = typer.Option(8, min=1, help="Examples per device step."),
        grad_accum: int = typer.Option(1, min=1, help="Device steps per optimizer step."),
        learning_rate: float = typer.Option(5e-4, help="LoRA learning rate (cosine schedule)."),
        lora_rank: int = typer.Option(16, min=1),
        lora_layers: int = typer.Option(30, min=1, help="LoRA on the top N decoder layers."),
        max_history: int = typer.Option(8, min=1, help="Most past pairs in a view (the judge's reward.max_history)."),
        max_chars: int = typer.Option(1200, min=64, help="Each text cut to this (the judge's reward.max_chars)."),
        check_share: float = typer.Option(0.5, min=0.0, max=1.0, help="Share of examples that check one reply "
                                                                       "against every criterion (the rest: "
                                                                       "syntheses)."),
        persona_rate: float = typer.Option(0.3, min=0.0, max=1.0, help="How often a synthesis example shows the "
                                                                        "user's stated persona."),
        criterion_first: bool = typer.Option(False, help="Checks name the criterion before the reply (slower to "
                                                         "score: a reply is read once per criterion)."),
        save_steps: int = typer.Option(50, min=1, help="Checkpoint every N steps."),
        seed: int = typer.Option(0),
        threads: Optional[int] = typer.Option(None, min=1, help="torch CPU threads."),
        init: Optional[Path] = typer.Option(None, "--init", help="A synthesis judge folder whose adapter this "
                                                                 "run continues (stages: checks alone with "
                                                                 "--check-share 1, then both)."),
        fresh: bool = typer.Option(False, help="Delete OUT/checkpoints first instead of resuming."),
    ):
        """The synthesis judge (the embedded default's stage): persona and weighted criteria from the history,
        learnt from teacher 'stated', and one digit per (reply, criterion). Runs on CUDA when there is one."""
        from pgenrm_plugins.training.run import command_line, train_synthesis
        from pgenrm_plugins.training.synthesis_stage import SynthesisSettings

        settings = SynthesisSettings(steps=steps, batch_size=batch_size, grad_accum=grad_accum,
                                     learning_rate=learning_rate, lora_rank=lora_rank, lora_layers=lora_layers,
                                     max_history=max_history, max_chars=max_chars, check_share=check_share,
                                     persona_rate=persona_rate, criterion_first=criterion_first,
                                     save_steps=save_steps, seed=seed, threads=threads)
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
        from pgenrm_plugins.training.run import evaluate

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
