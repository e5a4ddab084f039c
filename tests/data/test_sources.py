"""Loading local sources (txt, jsonl, parquet, folders, globs), caching, and bad-input errors."""
import os

import pytest

from diffmamba.config import DataConfig
from diffmamba.data.datasets import build_datasets
from diffmamba.data.sources import iter_texts
from diffmamba.core.errors import UserError

from data_helpers import ids, words, write_jsonl


def config(tmp_path, source, **kw):
    kw = {"seq_len": 4, "val_fraction": 0.2, "seed": 0, "cache_dir": str(tmp_path / "cache"), "num_proc": 1, **kw}
    return DataConfig(source=str(source), tokenizer="unused", **kw)


def documents(cfg):
    return list(iter_texts(cfg, progress=False))


def test_single_text_file_is_split_into_paragraphs(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(f"{words(0, 1)}\n{words(2)}\n\n{words(3)}\n\n\n{words(4, 5)}\n")
    assert [d.split() for d in documents(config(tmp_path, path))] == [["w0", "w1", "w2"], ["w3"], ["w4", "w5"]]
    assert len(documents(config(tmp_path, path, text_unit="line"))) == 4
    assert len(documents(config(tmp_path, path, text_unit="file"))) == 1


def test_folder_of_text_files_is_one_document_per_file_in_sorted_order(tmp_path, word_tokenizer):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text(f"{words(2)}\n\n{words(3)}")
    (folder / "a.txt").write_text(words(0, 1))
    (folder / "sub" / "c.md").write_text(words(4))
    (folder / ".hidden.txt").write_text(words(9))
    (folder / "notes.csv").write_text("ignored")
    assert [d.split() for d in documents(config(tmp_path, folder))] == [["w0", "w1"], ["w2", "w3"], ["w4"]]
    train, val = build_datasets(config(tmp_path, folder, packing="pad", val_fraction=0.3), word_tokenizer,
                                progress=False)
    assert len(train) + len(val) == 3


def test_jsonl_parquet_and_glob_sources_agree(tmp_path, word_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq
    texts = [words(i, i + 1) for i in range(0, 30, 3)]
    write_jsonl(tmp_path / "part1.jsonl", texts[:6], field="body")
    write_jsonl(tmp_path / "part2.jsonl", texts[6:], field="body")
    pq.write_table(pa.table({"body": texts, "n": list(range(len(texts)))}), tmp_path / "all.parquet")
    results = []
    for source in (tmp_path / "part*.jsonl", tmp_path / "all.parquet"):
        cfg = config(tmp_path, source, text_field="body")
        assert documents(cfg) == texts
        train, val = build_datasets(cfg, word_tokenizer, progress=False)
        results.append(([train[i]["input_ids"].tolist() for i in range(len(train))], len(val)))
    assert results[0] == results[1]
    assert results[0][0][0] == ids(0, 1) + [0] + ids(3)


def test_max_documents_caps_the_source(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", [words(i) for i in range(10)])
    assert len(documents(config(tmp_path, source, max_documents=4))) == 4


def test_cache_is_reused_and_keyed_by_seq_len(tmp_path, word_tokenizer):
    source = write_jsonl(tmp_path / "d.jsonl", [words(i, i + 1, i + 2) for i in range(12)])
    train, _ = build_datasets(config(tmp_path, source), word_tokenizer, progress=False)
    meta = os.path.join(train.info["folder"], "meta.json")
    stamp = os.stat(meta).st_mtime_ns
    again, _ = build_datasets(config(tmp_path, source), word_tokenizer, progress=False)
    assert again.info["folder"] == train.info["folder"] and os.stat(meta).st_mtime_ns == stamp
    longer, _ = build_datasets(config(tmp_path, source, seq_len=8), word_tokenizer, progress=False)
    assert longer.info["folder"] != train.info["folder"] and longer.seq_len == 8
    # same tokenised ids behind both packings: one tokenised cache entry
    assert len(os.listdir(tmp_path / "cache" / "tokenized")) == 1


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "missing.txt", "does not exist"),
    (lambda p: (p / "empty_dir").mkdir() or p / "empty_dir", "no text found"),
    (lambda p: p / "nothing*.jsonl", "no text found.*matches no files"),
    (lambda p: write_jsonl(p / "blank.jsonl", ["", "  ", "\n"]), "no text found"),
    (lambda p: write_jsonl(p / "other.jsonl", [words(1)], field="content"), "column 'text' not found.*content"),
    (lambda p: write_jsonl(p / "one.jsonl", [words(1, 2, 3)]), "only 1 document"),
    (lambda p: (p / "table.csv").write_text("a,b") and p / "table.csv", "not a supported kind of file"),
])
def test_bad_sources_are_user_errors(tmp_path, word_tokenizer, make, match):
    source = make(tmp_path)
    with pytest.raises(UserError, match=match):
        build_datasets(config(tmp_path, source), word_tokenizer, progress=False)


def test_mixed_file_kinds_are_refused(tmp_path, word_tokenizer):
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.txt").write_text(words(1))
    write_jsonl(tmp_path / "mixed" / "b.jsonl", [words(2)])
    with pytest.raises(UserError, match="mixes file kinds"):
        build_datasets(config(tmp_path, tmp_path / "mixed"), word_tokenizer, progress=False)


def test_seq_len_without_rows_is_a_user_error(tmp_path, word_tokenizer):
    source = write_jsonl(tmp_path / "d.jsonl", [words(i, i + 1) for i in range(6)])
    with pytest.raises(UserError, match="seq_len 64 yields no train rows.*lower data.seq_len"):
        build_datasets(config(tmp_path, source, seq_len=64), word_tokenizer, progress=False)
    streaming = build_datasets(config(tmp_path, source, seq_len=64, streaming=True), word_tokenizer)[0]
    with pytest.raises(UserError, match="yields no train rows"):
        list(streaming)


def test_hub_names_fail_cleanly_offline(tmp_path, word_tokenizer):
    with pytest.raises(UserError, match="could not load data from no-such-user/no-such-dataset"):
        build_datasets(config(tmp_path, "no-such-user/no-such-dataset"), word_tokenizer, progress=False)


def test_tokenizer_without_eos_is_refused_by_build(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer, models
    hf = HFTokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    hf.save(str(tmp_path / "tokenizer.json"))
    source = write_jsonl(tmp_path / "d.jsonl", ["a a", "a"])
    with pytest.raises(UserError, match="no end-of-text token"):
        build_datasets(config(tmp_path, source), str(tmp_path / "tokenizer.json"), progress=False)
