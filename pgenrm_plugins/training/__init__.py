"""`pgenrm train`: each stage writes a judge folder (a LoRA adapter + `pgenrm_judge.json`) that the
transformers backend loads by path, and resumes from `OUT/checkpoints` when run again.

    settings.py         what each stage is run with, declared once (options, manifest, resume check)
    stage.py            what every stage shares: checkpoints and the resume check, LoRA, run record
    score_stage.py      train_score: the digit slot of `reward.criteria: none` (judge J)
    synthesis_stage.py  train_synthesis: the synthesis judge (`reward.criteria: synthesis`),
                        teacher `stated`
    chain_pairs.py      what the chain stages share: (history, A/B pair) prompts, reading a chain
    psi_stage.py        train_psi: teacher chains kept when right, then SFT (TRL SFTTrainer)
    cre_stage.py        train_cre: GRPO on chains (TRL GRPOTrainer), outcome/format/process rewards
    items.py            score-stage items: a history view and the candidates scored after it
    evaluate.py         pairwise accuracy of a judge folder on held-out users
    synthesis_eval.py   a synthesis judge measured step by step
"""
