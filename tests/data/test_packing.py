"""Packing and the document split, on hand-written cases (ids: "w<n>" -> n + 2, EOS = 0)."""
import numpy as np
import torch

from diffmamba.config import DataConfig
from diffmamba.data.datasets import build_datasets
from diffmamba.data.packing import WrapPacker, guaranteed_validation_doc, pad_rows, split_window, validation_mask

from data_helpers import EOS as E, ids, words, write_jsonl

DOCS = [words(0, 1, 2), words(3, 4), words(5, 6, 7, 8), words(9), words(10, 11, 12), words(13, 14, 15, 16, 17)]


def config(tmp_path, source, **kw):
    # seed 0 / val_fraction 0.2 puts documents 2 and 4 into validation (pinned by test_split_is_pinned).
    kw = {"seq_len": 4, "val_fraction": 0.2, "seed": 0, "cache_dir": str(tmp_path / "cache"), "num_proc": 1, **kw}
    return DataConfig(source=source, tokenizer="unused", **kw)


def rows(dataset, key="input_ids"):
    return [dataset[i][key].tolist() for i in range(len(dataset))]


def test_wrap_packer_hand_case_and_grouping():
    docs = [np.array(ids(0, 1, 2)), np.array(ids(3, 4)), np.array(ids(9))]
    expected = [[2, 3, 4, E], [5, 6, E, 11]]  # tail [E] dropped
    assert WrapPacker(4, E).push(docs).tolist() == expected
    packer = WrapPacker(4, E)  # the carry makes any grouping of documents give the same rows
    assert np.concatenate([packer.push(docs[:1]), packer.push(docs[1:2]), packer.push(docs[2:])]).tolist() == expected


def test_pad_rows_hand_case():
    rows_, lengths = pad_rows([np.array(ids(0, 1, 2)), np.array(ids(3)), np.array(ids(5, 6, 7, 8, 9))], 4, E)
    assert rows_.tolist() == [[2, 3, 4, E], [5, E, E, E], [7, 8, 9, 10]]
    assert lengths.tolist() == [4, 2, 4]  # EOS counts when it fits; a truncated document has none


def test_split_is_pinned_deterministic_and_never_empty():
    index = np.arange(6)
    guaranteed = guaranteed_validation_doc(min(6, split_window(0.2)), 0, 0.2)
    assert np.flatnonzero(validation_mask(index, 0, 0.2, guaranteed)).tolist() == [2, 4]
    # a tiny fraction still yields exactly the one guaranteed document
    guaranteed = guaranteed_validation_doc(min(6, split_window(1e-4)), 0, 1e-4)
    assert np.flatnonzero(validation_mask(index, 0, 1e-4, guaranteed)).tolist() == [guaranteed]
    # a fraction is honoured on large corpora, and other seeds pick other documents
    big = np.arange(100_000)
    frac = validation_mask(big, 7, 0.05, guaranteed_validation_doc(20, 7, 0.05)).mean()
    assert 0.045 < frac < 0.055
    assert not np.array_equal(validation_mask(big, 7, 0.05, 0), validation_mask(big, 8, 0.05, 0))


def test_build_wrap_exact_rows_and_no_leakage(tmp_path, word_tokenizer):
    source = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    train, val = build_datasets(config(tmp_path, source), word_tokenizer, progress=False)
    # train documents 0, 1, 3, 5 -> 2 3 4 E | 5 6 E | 11 E | 15 16 17 18 19 E; tail [18 19 E] dropped
    assert rows(train) == [[2, 3, 4, E], [5, 6, E, 11], [E, 15, 16, 17]]
    # validation documents 2, 4 -> 7 8 9 10 E | 12 13 14 E; tail [E] dropped
    assert rows(val) == [[7, 8, 9, 10], [E, 12, 13, 14]]
    assert train[0]["input_ids"].dtype == torch.int64 and set(train[0]) == {"input_ids"}
    train_tokens = {t for r in rows(train) for t in r} - {E}
    val_tokens = {t for r in rows(val) for t in r} - {E}
    assert not train_tokens & val_tokens
    assert (train.info["documents"], val.info["documents"]) == (4, 2)


def test_build_pad_rows_and_valid_mask(tmp_path, word_tokenizer):
    source = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    train, val = build_datasets(config(tmp_path, source, packing="pad"), word_tokenizer, progress=False)
    assert rows(train) == [[2, 3, 4, E], [5, 6, E, E], [11, E, E, E], [15, 16, 17, 18]]
    assert rows(train, "valid") == [[True] * 4, [True, True, True, False], [True, True, False, False], [True] * 4]
    assert rows(val) == [[7, 8, 9, 10], [12, 13, 14, E]]
    assert train[1]["valid"].dtype == torch.bool
    assert train.num_tokens == 4 + 3 + 2 + 4


def test_streaming_yields_the_same_rows(tmp_path, word_tokenizer):
    texts = [words(*range(i % 7, i % 7 + 1 + i % 5)) for i in range(57)] + ["", "   "]
    source = write_jsonl(tmp_path / "many.jsonl", texts)
    for packing in ("wrap", "pad"):
        cfg = config(tmp_path, source, packing=packing, seq_len=5)
        mapped = build_datasets(cfg, word_tokenizer, progress=False)
        streamed = build_datasets(config(tmp_path, source, packing=packing, seq_len=5, streaming=True),
                                  word_tokenizer)
        for m, s in zip(mapped, streamed):
            got = list(s)
            assert len(got) == len(m) > 0
            for i, row in enumerate(got):
                assert set(row) == set(m[i])
                for key in row:
                    assert torch.equal(row[key], m[i][key]), (packing, i, key)


def test_streaming_shards_partition_the_documents(tmp_path, word_tokenizer, monkeypatch):
    import diffmamba.data.datasets as datasets_module
    monkeypatch.setattr(datasets_module, "DOC_BATCH", 3)  # several document batches from a small file
    source = write_jsonl(tmp_path / "docs.jsonl", [words(i % 40) for i in range(40)])
    cfg = config(tmp_path, source, packing="pad", streaming=True, val_fraction=0.1)
    train, _ = build_datasets(cfg, word_tokenizer)
    whole = sorted(r["input_ids"][0].item() for r in train)
    halves = [build_datasets(cfg, word_tokenizer)[0].shard(2, k) for k in range(2)]
    firsts = [[r["input_ids"][0].item() for r in h] for h in halves]
    assert firsts[0] and firsts[1] and sorted(firsts[0] + firsts[1]) == whole


def test_packed_rows_pickle_without_their_data_and_batch(tmp_path, word_tokenizer):
    import pickle
    source = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    train, _ = build_datasets(config(tmp_path, source, packing="pad"), word_tokenizer, progress=False)
    blob = pickle.dumps(train)
    assert len(blob) < 2000  # the folder name, not the rows
    clone = pickle.loads(blob)
    assert torch.equal(clone[3]["input_ids"], train[3]["input_ids"]) and torch.equal(clone[-1]["valid"], train[3]["valid"])
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=4)))
    assert batch["input_ids"].shape == (4, 4) and batch["valid"].dtype == torch.bool
