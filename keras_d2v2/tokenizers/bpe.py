"""Byte-level BPE tokenizer (GPT-2 / RoBERTa style) with the fairseq token ids the text model expects.

Why HuggingFace `tokenizers` and not keras-hub: the text model needs a tokenizer that can be *trained*
offline on the user's own corpus and that gives the same ids on TensorFlow, JAX and PyTorch.
`tokenizers` has a fast byte-level BPE trainer in a single compiled wheel with no TensorFlow; it runs on
plain strings and returns plain integer lists, so nothing here touches a Keras backend.
`keras_hub.tokenizers.BytePairTokenizer` only loads an existing vocab + merges (keras-hub has no BPE
trainer), and the keras-hub package requires `tensorflow-text` (hence TensorFlow) even on the JAX and
PyTorch backends. The files written here (`vocab.json` + `merges.txt`, GPT-2 byte-level format) load in
keras-hub's `BytePairTokenizer` and in HuggingFace's `RobertaTokenizer`, and theirs load here.

Ids follow fairseq's dictionaries, as the reference's text model was trained with: `<s>`=0, `<pad>`=1,
`</s>`=2, `<unk>`=3, then the BPE tokens, then `<mask>` last (data2vec 2.0 never feeds `<mask>`: masked
tokens are removed, but the reference's vocabulary has it). A sequence is encoded as fairseq's RoBERTa
does: `<s> tokens </s>`, padded with `<pad>`, which is `TextEncoder`'s `pad_id`.
"""

import contextlib
import json
import os

import numpy as np

from keras_d2v2.atomic_write import replaced_atomically

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
BOS_ID, PAD_ID, EOS_ID, UNK_ID = range(4)
MASK_TOKEN = "<mask>"
CONFIG_FILE = "tokenizer_config.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
# The 4 specials, the 256 byte symbols and `<mask>`: a vocabulary with no merges at all.
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256 + 1


def _tokenizers():
    try:
        import tokenizers
    except ImportError as error:
        raise ImportError(
            "ByteLevelBPETokenizer needs the `tokenizers` package: pip install 'keras-d2v2[text]'."
        ) from error
    return tokenizers


def _read_merges(path):
    """GPT-2 / RoBERTa merges file: an optional `#version` line, then one `left right` pair per line."""
    merges = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            line = line.rstrip("\r\n")
            if not line or (number == 1 and line.startswith("#version")):
                continue
            pair = line.split(" ")
            if len(pair) != 2:
                raise ValueError(f"{path}, line {number}: a merge must be two tokens separated by a space, got {line!r}.")
            merges.append(tuple(pair))
    return merges


def _read_json_vocabulary(path):
    with open(path, encoding="utf-8") as file:
        vocabulary = json.load(file)
    if not isinstance(vocabulary, dict) or not all(isinstance(i, int) for i in vocabulary.values()):
        raise ValueError(f"{path} must hold a JSON object mapping tokens to integer ids.")
    return vocabulary


def _lines(files):
    for path in files:
        with open(path, encoding="utf-8") as file:
            yield from file


class ByteLevelBPETokenizer:
    """Byte-level BPE tokenizer giving `TextEncoder` token ids: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3.

    Make one with `train()` (on your own corpus, offline), `from_files()` (an existing RoBERTa-style
    `vocab.json` + `merges.txt`, e.g. HuggingFace's `roberta-base`, whose ids are fairseq's),
    `from_fairseq()` (GPT-2's `encoder.json` + `vocab.bpe` with a fairseq `dict.txt`, as the reference's
    checkpoints come) or `load()` (a directory written by `save()`). Needs the `text` extra
    (`pip install 'keras-d2v2[text]'`, the HuggingFace `tokenizers` package); the output is NumPy, the
    same on every Keras backend. Text containing `<s>`, `<pad>` etc. is tokenized as ordinary
    characters, as in fairseq: only `encode()` inserts the special ids.

    Args:
        vocabulary: dict mapping each token to its id; ids must be `0 .. len - 1`, with the four
            specials at 0-3.
        merges: list of `(left, right)` token pairs, highest priority first.
        max_length: longest sequence `encode()` gives, `<s>` and `</s>` included (the reference's
            position table holds 512).

    Example:
    >>> tokenizer = ByteLevelBPETokenizer.train(["some text", "more text"] * 50, vocab_size=300)
    >>> ids = tokenizer.encode(["some text", "more"])   # int32 (2, 4): <s> some Ġtext </s>, <s> more </s> <pad>
    >>> tokenizer.decode(ids)
    ['some text', 'more']
    >>> tokenizer.save("tokenizer"); tokenizer = ByteLevelBPETokenizer.load("tokenizer")
    >>> model = keras_d2v2.Data2Vec2.text(preset="tiny", vocab_size=tokenizer.vocabulary_size)
    """

    def __init__(self, *, vocabulary, merges, max_length=512):
        tokenizers = _tokenizers()
        for token_id, token in enumerate(SPECIAL_TOKENS):
            if vocabulary.get(token) != token_id:
                raise ValueError(
                    f"The vocabulary must map {token!r} to {token_id} (fairseq's special ids, which the text model "
                    f"uses: {dict(zip(SPECIAL_TOKENS, range(4)))}); it maps it to {vocabulary.get(token)}. GPT-2's "
                    "`encoder.json` has no such tokens: load it with its fairseq `dict.txt` via `from_fairseq()`."
                )
        if sorted(vocabulary.values()) != list(range(len(vocabulary))):
            raise ValueError(f"Vocabulary ids must be 0 .. {len(vocabulary) - 1}, each used once.")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"`max_length` must be an integer >= 2 (room for <s> and </s>), got {max_length!r}.")
        self.vocabulary = dict(vocabulary)
        self.merges = [tuple(pair) for pair in merges]
        self.max_length = max_length
        self.mask_id = self.vocabulary.get(MASK_TOKEN)
        model = tokenizers.models.BPE(self.vocabulary, self.merges, unk_token=SPECIAL_TOKENS[UNK_ID])
        self._tokenizer = tokenizers.Tokenizer(model)
        self._tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        self._tokenizer.decoder = tokenizers.decoders.ByteLevel()
        self._special_ids = np.array([i for i in (BOS_ID, PAD_ID, EOS_ID, UNK_ID, self.mask_id) if i is not None])

    # ---------------------------------------------------------------- making one

    @classmethod
    def train(cls, texts=None, *, files=None, vocab_size, min_frequency=2, max_length=512):
        """Learns a byte-level BPE vocabulary of `vocab_size` ids (specials and `<mask>` included).

        Args:
            texts: iterable of strings (a generator is fine: it is read once).
            files: list of text file paths, instead of `texts`; each line is a piece of text.
            vocab_size: ids wanted, at least 261 (4 specials + 256 bytes + `<mask>`); a small corpus
                may give fewer (`vocabulary_size` tells).
            min_frequency: a pair must occur this often to be merged.
            max_length: see the class.
        """
        tokenizers = _tokenizers()
        if (texts is None) == (files is None):
            raise ValueError("Pass exactly one of `texts` (an iterable of strings) or `files` (a list of paths).")
        if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"`vocab_size` must be an integer >= {MIN_VOCAB_SIZE} (4 specials, 256 byte symbols and <mask>), "
                f"got {vocab_size!r}."
            )
        if files is not None:
            if isinstance(files, (str, os.PathLike)):
                files = [files]
            missing = [str(f) for f in files if not os.path.isfile(f)]
            if missing:
                raise ValueError(f"Corpus file(s) not found: {missing}.")
            texts = _lines(files)
        elif isinstance(texts, str):
            raise ValueError("`texts` must be an iterable of strings, not one string: wrap it in a list.")
        seen = {"characters": 0}

        def counted():
            for index, text in enumerate(texts):
                if not isinstance(text, str):
                    raise ValueError(f"`texts` item {index} is {type(text).__name__}, not str.")
                seen["characters"] += len(text.strip())
                yield text

        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size - 1,  # `<mask>` goes last, after training
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        learner = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=SPECIAL_TOKENS[UNK_ID]))
        learner.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        learner.train_from_iterator(counted(), trainer)
        if not seen["characters"]:
            raise ValueError("The training corpus is empty (no non-whitespace text).")
        learned = json.loads(learner.to_str())["model"]
        vocabulary = dict(learned["vocab"])
        vocabulary[MASK_TOKEN] = len(vocabulary)
        return cls(vocabulary=vocabulary, merges=learned["merges"], max_length=max_length)

    @classmethod
    def from_files(cls, vocabulary, merges, *, max_length=512):
        """Loads a RoBERTa-style `vocab.json` (token -> id, specials at 0-3) and `merges.txt`.

        HuggingFace's `roberta-base` files and the ones `save()` writes are of this kind; their ids are
        the reference's (fairseq's RoBERTa dictionary, `<mask>` = 50264).
        """
        return cls(vocabulary=_read_json_vocabulary(vocabulary), merges=_read_merges(merges), max_length=max_length)

    @classmethod
    def from_fairseq(cls, encoder_json, vocab_bpe, dictionary, *, max_length=512):
        """Loads GPT-2's BPE (`encoder.json`, `vocab.bpe`) with a fairseq `dict.txt`, as fairseq does.

        fairseq's RoBERTa and data2vec text models encode text with GPT-2's BPE, write each GPT-2 id as a
        decimal string, and look that up in `dict.txt` (one `symbol count` per line): line `i` gets id
        `4 + i` after the specials, and `<mask>` is appended last. Symbols that are not GPT-2 ids (fairseq's
        `madeupword` padding entries) keep their own text. GPT-2 tokens missing from the dictionary encode
        to `<unk>`; a dictionary missing a token that a merge uses or builds is rejected, since fairseq
        would give `<unk>` for a whole word where BPE here would give its pieces.
        """
        gpt2 = {token_id: token for token, token_id in _read_json_vocabulary(encoder_json).items()}
        vocabulary = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
        with open(dictionary, encoding="utf-8") as file:
            for number, line in enumerate(file, 1):
                fields = line.rstrip("\r\n").rsplit(" ", 1)
                if fields[-1] == "#fairseq:overwrite":
                    fields = fields[0].rsplit(" ", 1)
                if len(fields) != 2 or not fields[1].isdigit():
                    raise ValueError(f"{dictionary}, line {number}: expected `symbol count`, got {line.rstrip()!r}.")
                symbol = fields[0]
                token = gpt2.get(int(symbol), symbol) if symbol.isascii() and symbol.isdigit() else symbol
                if token in vocabulary:
                    raise ValueError(f"{dictionary}, line {number}: {symbol!r} appears twice.")
                vocabulary[token] = len(vocabulary)
        vocabulary[MASK_TOKEN] = len(vocabulary)
        merges = _read_merges(vocab_bpe)
        missing = sorted({t for a, b in merges for t in (a, b, a + b) if t not in vocabulary})
        if missing:
            raise ValueError(
                f"{dictionary} lacks {len(missing)} token(s) that the merges of {vocab_bpe} use or build "
                f"(e.g. {missing[:5]}); this is not the dictionary of that BPE."
            )
        return cls(vocabulary=vocabulary, merges=merges, max_length=max_length)

    @classmethod
    def load(cls, directory):
        """Loads a tokenizer written by `save()`."""
        config_path = os.path.join(directory, CONFIG_FILE)
        if not os.path.isfile(config_path):
            raise ValueError(f"{directory} holds no {CONFIG_FILE}: not a directory written by `save()`.")
        with open(config_path, encoding="utf-8") as file:
            config = json.load(file)
        return cls.from_files(
            os.path.join(directory, VOCAB_FILE), os.path.join(directory, MERGES_FILE), max_length=config["max_length"]
        )

    def save(self, directory):
        """Writes `vocab.json`, `merges.txt` (RoBERTa format) and `tokenizer_config.json` to `directory`.

        Each file is written whole under a temporary name beside its target, and the three are moved
        into place with `os.replace` only once all are written (`tokenizer_config.json` last), so a
        save that fails (a full disk, a killed process) leaves a tokenizer saved there before whole
        and loadable. A killed writer can leave its temporary files (`.vocab.json.*`) behind.
        """
        os.makedirs(directory, exist_ok=True)
        contents = {  # replaced in the reverse order: the config, which `load` looks for, last
            CONFIG_FILE: json.dumps(self.get_config(), indent=1),
            VOCAB_FILE: json.dumps(self.vocabulary, ensure_ascii=False),
            MERGES_FILE: "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges),
        }
        with contextlib.ExitStack() as stack:
            for name, text in contents.items():
                tmp = stack.enter_context(replaced_atomically(os.path.join(directory, name)))
                with open(tmp, "w", encoding="utf-8") as file:
                    file.write(text)

    def get_config(self):
        """The settings besides the vocabulary and merges (what `tokenizer_config.json` holds)."""
        return {"max_length": self.max_length, "special_tokens": dict(zip(SPECIAL_TOKENS, range(4)))}

    # ---------------------------------------------------------------- using one

    @property
    def vocabulary_size(self):
        """Number of ids; the text model's `vocab_size` must be at least this."""
        return len(self.vocabulary)

    def check_model(self, model):
        """Raises a ValueError if this tokenizer's ids or lengths do not fit `model` (a text `Data2Vec2`
        or `TextEncoder`): vocabulary larger than its embedding table, another pad id, or a
        `max_length` beyond its position table."""
        encoder = getattr(model, "encoder", model)
        if not hasattr(encoder, "max_positions"):
            raise ValueError(f"{type(model).__name__} is not a text model (it has no token position table).")
        if self.vocabulary_size > encoder.vocab_size:
            raise ValueError(
                f"The tokenizer has {self.vocabulary_size} ids but the model's embedding table holds "
                f"{encoder.vocab_size}; build the model with `vocab_size={self.vocabulary_size}`."
            )
        if encoder.pad_id != PAD_ID:
            raise ValueError(f"The model pads with id {encoder.pad_id}; this tokenizer pads with {PAD_ID}.")
        if self.max_length > encoder.max_positions:
            raise ValueError(
                f"The tokenizer's `max_length` is {self.max_length} but the model's position table holds "
                f"{encoder.max_positions} positions; use `max_length <= {encoder.max_positions}`."
            )

    def _token_ids(self, texts):
        if isinstance(texts, str):
            raise ValueError("`texts` must be a list of strings, not one string: wrap it in a list.")
        texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"`texts` item {index} is {type(text).__name__}, not str.")
        return [encoding.ids for encoding in self._tokenizer.encode_batch(texts)]

    def encode(self, texts, *, max_length=None, padding="longest"):
        """Token ids of each text as fairseq's RoBERTa frames them: `<s> tokens </s>`, cut so the row
        fits `max_length` (`</s>` kept), then padded with `<pad>` (1) on the right.

        Args:
            texts: list of strings.
            max_length: longest row, at most the tokenizer's `max_length` (the default).
            padding: `"longest"` pads to the longest row of the batch, `"max_length"` to `max_length`
                (a fixed shape, which saves recompiling on JAX and TensorFlow).

        Returns:
            int32 NumPy array `(len(texts), T)`.
        """
        max_length = self.max_length if max_length is None else max_length
        if not isinstance(max_length, int) or not 2 <= max_length <= self.max_length:
            raise ValueError(
                f"`max_length` must be an integer in [2, {self.max_length}] (the tokenizer's `max_length`, "
                f"set to fit the model's position table), got {max_length!r}."
            )
        if padding not in ("longest", "max_length"):
            raise ValueError(f"`padding` must be 'longest' or 'max_length', got {padding!r}.")
        rows = [[BOS_ID] + ids[: max_length - 2] + [EOS_ID] for ids in self._token_ids(texts)]
        width = max_length if padding == "max_length" else max((len(r) for r in rows), default=2)
        out = np.full((len(rows), width), PAD_ID, dtype="int32")
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def encode_chunks(self, texts, *, block_length=None):
        """Cuts each text's tokens into consecutive pieces of `block_length - 2` tokens, each framed as
        `<s> piece </s>` and padded to `block_length` (only a text's last piece is short). Pieces never
        span two texts, so each one can carry its text's label.

        Returns:
            `(blocks, source)`: int32 `(N, block_length)` and int64 `(N,)`, the index in `texts` of the
            text each block came from. Texts with no tokens give no block.
        """
        block_length = self.max_length if block_length is None else block_length
        if not isinstance(block_length, int) or not 3 <= block_length <= self.max_length:
            raise ValueError(f"`block_length` must be an integer in [3, {self.max_length}], got {block_length!r}.")
        step = block_length - 2
        blocks, source = [], []
        for index, ids in enumerate(self._token_ids(texts)):
            for start in range(0, len(ids), step):
                piece = ids[start : start + step]
                blocks.append([BOS_ID] + piece + [EOS_ID] + [PAD_ID] * (step - len(piece)))
                source.append(index)
        return np.array(blocks, dtype="int32").reshape(-1, block_length), np.array(source, dtype="int64")

    def decode(self, ids):
        """Text of each row of `ids` (`(B, T)`, or one `(T,)` row for one string), special ids dropped."""
        ids = np.asarray(ids)
        if ids.ndim not in (1, 2) or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"`ids` must be integer token ids of rank 1 or 2, got {ids.dtype} of shape {ids.shape}.")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocabulary_size):
            raise ValueError(f"`ids` holds ids in [{ids.min()}, {ids.max()}], outside [0, {self.vocabulary_size}).")
        rows = ids if ids.ndim == 2 else ids[None]
        keep = ~np.isin(rows, self._special_ids)
        texts = self._tokenizer.decode_batch([row[k].tolist() for row, k in zip(rows, keep)])
        return texts if ids.ndim == 2 else texts[0]

    def __repr__(self):
        return f"ByteLevelBPETokenizer(vocabulary_size={self.vocabulary_size}, max_length={self.max_length})"
