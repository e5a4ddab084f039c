"""Tiny checkpoints for the evaluation tests: freshly initialised DiffMamba models saved with
save_pretrained, a byte-level BPE trained on a small synthetic corpus, and a run_config.yaml whose
data section points at that corpus, so the validation split can be rebuilt exactly as in training."""
import os

import pytest
import torch

from checkpoint_helpers import write_run

WORDS = ("the quick brown fox jumps over the lazy dog while a small cat sleeps near the warm fire "
         "and birds sing in the old tree").split()


def _docs(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(20, 60, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (k,), generator=g)))
    return out


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory):
    """{'diffusion': run folder, 'ar': run folder, 'other_tok': run folder with another tokenizer, 'corpus': path}"""
    from diffmamba.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("tiny-eval")
    docs = _docs(200, 0)
    corpus = os.path.join(root, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n\n".join(docs))
    tok = train_bpe(docs, 300, show_progress=False)
    other = train_bpe(docs, 280, show_progress=False)
    return {
        "diffusion": write_run(os.path.join(root, "diff"), tok, corpus, "diffusion", seed=1),
        "ar": write_run(os.path.join(root, "ar"), tok, corpus, "ar", seed=2),
        "other_tok": write_run(os.path.join(root, "other"), other, corpus, "ar", seed=3),
        "corpus": corpus,
        "tokenizer": tok,
        "root": str(root),
    }


@pytest.fixture(scope="session")
def tiny_hf_judge(tiny_ckpts):
    """A randomly initialised 1-layer GPT-2 with a fast tokenizer, saved as a local HF folder."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as HFTokenizer

    folder = os.path.join(tiny_ckpts["root"], "hf-judge")
    hf_tok = HFTokenizer.from_file(os.path.join(tiny_ckpts["ar"], "final", "tokenizer.json"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=hf_tok, bos_token="<|endoftext|>",
                                               eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
