"""ByteLevelBPETokenizer: training, fairseq id layout, padding, chunks, save/load, existing vocabularies, errors."""

import json

import keras
import numpy as np
import pytest
from keras import ops

from keras_d2v2 import ByteLevelBPETokenizer, Data2Vec2

WORDS = "the model reads text and learns to predict masked tokens from their context with a teacher".split()
ODD = ["naïve café", "日本語のテキスト", "tabs\tand\nnew lines", "emoji 🙂 ok", "  two  spaces", "x" * 50]


def corpus(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 15))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer():
    return ByteLevelBPETokenizer.train(corpus(), vocab_size=320, max_length=64)


def test_training_gives_fairseq_special_ids_and_mask_last(tokenizer):
    vocabulary = tokenizer.vocabulary
    assert [vocabulary[t] for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert tokenizer.mask_id == vocabulary["<mask>"] == tokenizer.vocabulary_size - 1
    assert sorted(vocabulary.values()) == list(range(tokenizer.vocabulary_size))
    # Merges were learned: frequent words are single tokens (GPT-2's `Ġ` marks a leading space).
    assert tokenizer.vocabulary_size == 320
    assert "Ġteacher" in vocabulary and "Ġthe" in vocabulary


def test_round_trip_including_unseen_characters(tokenizer):
    texts = corpus(20, seed=1) + ODD
    ids = tokenizer.encode(texts)
    assert tokenizer.decode(ids) == texts
    assert tokenizer.decode(ids[0]) == texts[0]  # one row gives one string


def test_rows_are_bos_tokens_eos_then_padding(tokenizer):
    ids = tokenizer.encode(["the model reads text", "", "a"])
    assert ids.dtype == np.int32 and ids.shape[0] == 3
    lengths = (ids != 1).sum(1)
    assert ids.shape[1] == lengths.max()  # padded to the longest row
    for row, length in zip(ids, lengths):
        assert row[0] == 0 and row[length - 1] == 2
        assert (row[length:] == 1).all() and not np.isin(row[1 : length - 1], [0, 1, 2]).any()
    np.testing.assert_array_equal(ids[1, :2], [0, 2])  # the empty string is <s> </s>
    assert tokenizer.encode(["a"], padding="max_length").shape == (1, 64)
    # Text spelling a special token is ordinary text, as in fairseq.
    spelled = tokenizer.encode(["<s> <pad> </s>"])[0]
    assert not np.isin(spelled[1:-1], [0, 1, 2, 3]).any()
    assert tokenizer.decode(spelled) == "<s> <pad> </s>"


def test_truncation_keeps_the_first_tokens_and_eos(tokenizer):
    text = " ".join(WORDS * 5)
    full = tokenizer.encode([text], max_length=64)[0]
    cut = tokenizer.encode([text], max_length=10)[0]
    assert cut.shape == (10,) and (full != 1).all()  # the full row was itself cut at 64
    np.testing.assert_array_equal(cut[:9], full[:9])
    assert cut[9] == 2 and full[63] == 2


def test_chunks_cover_every_token_once_and_stay_inside_their_text(tokenizer):
    texts = [" ".join(WORDS * 3), "", "the model"]
    blocks, source = tokenizer.encode_chunks(texts, block_length=12)
    assert blocks.shape[1] == 12 and blocks.dtype == np.int32
    np.testing.assert_array_equal(np.unique(source), [0, 2])  # the empty text gives no block
    for index in (0, 2):
        rows = blocks[source == index]
        assert (rows[:, 0] == 0).all()
        inner = [row[1 : list(row).index(2)] for row in rows]
        assert all(len(piece) == 10 for piece in inner[:-1])  # only the last block of a text is short
        expected = tokenizer.encode([texts[index]])[0]
        np.testing.assert_array_equal(np.concatenate(inner), expected[1:-1])


def test_save_load_gives_identical_ids(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tok")
    assert {p.name for p in (tmp_path / "tok").iterdir()} == {"vocab.json", "merges.txt", "tokenizer_config.json"}
    loaded = ByteLevelBPETokenizer.load(tmp_path / "tok")
    assert loaded.max_length == 64 and loaded.vocabulary == tokenizer.vocabulary and loaded.merges == tokenizer.merges
    texts = corpus(30, seed=2) + ODD
    np.testing.assert_array_equal(loaded.encode(texts), tokenizer.encode(texts))
    # The saved files are plain RoBERTa-style vocab.json + merges.txt.
    files = tmp_path / "tok" / "vocab.json", tmp_path / "tok" / "merges.txt"
    again = ByteLevelBPETokenizer.from_files(*files, max_length=64)
    np.testing.assert_array_equal(again.encode(texts), tokenizer.encode(texts))


def test_train_from_files_equals_train_from_strings(tmp_path):
    lines = corpus(200, seed=3)
    (tmp_path / "a.txt").write_text("\n".join(lines[:100]) + "\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n".join(lines[100:]) + "\n", encoding="utf-8")
    from_files = ByteLevelBPETokenizer.train(files=[tmp_path / "a.txt", tmp_path / "b.txt"], vocab_size=300)
    from_strings = ByteLevelBPETokenizer.train((line + "\n" for line in lines), vocab_size=300)
    assert from_files.merges == from_strings.merges and from_files.vocabulary == from_strings.vocabulary


def write_roberta_files(directory, vocabulary, merges):
    (directory / "vocab.json").write_text(json.dumps(vocabulary), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return directory / "vocab.json", directory / "merges.txt"


# A hand-made GPT-2 style BPE: "hello", " w" and "orld" are single tokens.
BPE_TOKENS = ["h", "e", "l", "o", "Ġ", "w", "r", "d", "he", "ll", "hell", "hello", "Ġw", "or", "orl", "orld"]
BPE_MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r"), ("or", "l"), ("orl", "d")]


def test_existing_roberta_vocabulary(tmp_path):
    vocabulary = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>"] + BPE_TOKENS + ["<mask>"])}
    tokenizer = ByteLevelBPETokenizer.from_files(*write_roberta_files(tmp_path, vocabulary, BPE_MERGES))
    ids = tokenizer.encode(["hello world", "hello!"])
    v = vocabulary
    np.testing.assert_array_equal(ids[0], [0, v["hello"], v["Ġw"], v["orld"], 2])
    # "!" is in neither the vocabulary nor a merge: <unk>, as fairseq maps symbols it does not know.
    np.testing.assert_array_equal(ids[1], [0, v["hello"], 3, 2, 1])
    assert tokenizer.decode(ids) == ["hello world", "hello"]
    assert tokenizer.mask_id == len(vocabulary) - 1


def test_existing_fairseq_dictionary(tmp_path):
    gpt2 = {t: i for i, t in enumerate(BPE_TOKENS + ["<|endoftext|>"])}
    encoder_json, vocab_bpe = write_roberta_files(tmp_path, gpt2, BPE_MERGES)
    # fairseq's dict.txt lists GPT-2 ids by frequency, not in id order; <|endoftext|> is left out here.
    order = [11, 12, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14]
    lines = [f"{gpt2_id} {1000 - n}" for n, gpt2_id in enumerate(order)] + ["madeupword0000 0 #fairseq:overwrite"]
    (tmp_path / "dict.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = ByteLevelBPETokenizer.from_fairseq(encoder_json, vocab_bpe, tmp_path / "dict.txt")
    fairseq_id = {gpt2_id: 4 + n for n, gpt2_id in enumerate(order)}
    ids = tokenizer.encode(["hello world"])[0]
    np.testing.assert_array_equal(ids, [0] + [fairseq_id[gpt2[t]] for t in ("hello", "Ġw", "orld")] + [2])
    assert ids[1:4].tolist() == [4, 5, 6]
    assert tokenizer.vocabulary["madeupword0000"] == 4 + len(order)
    assert tokenizer.mask_id == tokenizer.vocabulary_size - 1 == 4 + len(order) + 1
    assert tokenizer.decode(ids) == "hello world"

    (tmp_path / "short.txt").write_text("\n".join(lines[:5]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks \d+ token\(s\) that the merges .* use or build"):
        ByteLevelBPETokenizer.from_fairseq(encoder_json, vocab_bpe, tmp_path / "short.txt")


def test_tokens_feed_the_text_model_on_this_backend(tokenizer):
    keras.utils.set_random_seed(0)
    model = Data2Vec2.text(preset="tiny_test", vocab_size=tokenizer.vocabulary_size, max_positions=64, seed=0)
    tokenizer.check_model(model)
    ids = tokenizer.encode(corpus(4, seed=4))
    hidden = model.encoder(ids)
    assert tuple(hidden.shape) == ids.shape + (32,)
    assert np.isfinite(ops.convert_to_numpy(hidden)).all()


def test_bad_input_errors(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"corpus is empty"):
        ByteLevelBPETokenizer.train([], vocab_size=300)
    with pytest.raises(ValueError, match=r"corpus is empty"):
        ByteLevelBPETokenizer.train(["  ", "\n"], vocab_size=300)
    with pytest.raises(ValueError, match=r"`vocab_size` must be an integer >= 261 .* got 260"):
        ByteLevelBPETokenizer.train(corpus(), vocab_size=260)
    with pytest.raises(ValueError, match=r"exactly one of `texts`"):
        ByteLevelBPETokenizer.train(vocab_size=300)
    with pytest.raises(ValueError, match=r"not one string"):
        ByteLevelBPETokenizer.train("the model", vocab_size=300)
    with pytest.raises(ValueError, match=r"`texts` item 1 is int, not str"):
        ByteLevelBPETokenizer.train(["a", 3], vocab_size=300)
    with pytest.raises(ValueError, match=r"Corpus file\(s\) not found"):
        ByteLevelBPETokenizer.train(files=[tmp_path / "missing.txt"], vocab_size=300)

    # GPT-2's encoder.json has no fairseq specials.
    gpt2 = {t: i for i, t in enumerate(BPE_TOKENS)}
    with pytest.raises(ValueError, match=r"must map '<s>' to 0 .* `from_fairseq\(\)`"):
        ByteLevelBPETokenizer.from_files(*write_roberta_files(tmp_path, gpt2, BPE_MERGES))
    with pytest.raises(ValueError, match=r"holds no tokenizer_config.json"):
        ByteLevelBPETokenizer.load(tmp_path)

    with pytest.raises(ValueError, match=r"`max_length` must be an integer in \[2, 64\] .* got 65"):
        tokenizer.encode(["a"], max_length=65)
    with pytest.raises(ValueError, match=r"`padding` must be 'longest' or 'max_length'"):
        tokenizer.encode(["a"], padding="right")
    with pytest.raises(ValueError, match=r"list of strings, not one string"):
        tokenizer.encode("the model")
    with pytest.raises(ValueError, match=r"`block_length` must be an integer in \[3, 64\]"):
        tokenizer.encode_chunks(["a"], block_length=2)
    with pytest.raises(ValueError, match=r"outside \[0, 320\)"):
        tokenizer.decode(np.array([[0, 320]]))

    small = Data2Vec2.text(preset="tiny_test")  # 100 ids, 32 positions
    with pytest.raises(ValueError, match=r"tokenizer has 320 ids but the model's embedding table holds 100"):
        tokenizer.check_model(small)
    big = Data2Vec2.text(preset="tiny_test", vocab_size=320)
    with pytest.raises(ValueError, match=r"`max_length` is 64 but the model's position table holds 32 positions"):
        tokenizer.check_model(big.encoder)
