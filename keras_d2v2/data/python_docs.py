"""The Python 3.11 documentation sources as a labelled text corpus (Debian's `python3.11-doc`, offline)."""

import os
import pathlib

import numpy as np

PYTHON_DOCS_DIR = pathlib.Path(os.environ.get("PYTHON_DOCS_DIR", "/usr/share/doc/python3.11/html/_sources"))
# The top-level sections the recipes classify blocks into (6 classes).
DOC_SECTIONS = ("library", "c-api", "whatsnew", "howto", "reference", "tutorial")


def load_python_docs(directory=None):
    """Returns `(texts, sections, names)`: every `*.rst.txt` file under `directory`, sorted by path.

    `sections` is each file's top-level folder (`library`, `reference`, `tutorial`, `howto`, `c-api`,
    `whatsnew`, ...; `""` for the files at the top), `names` its path relative to `directory`. The
    default `directory` is `$PYTHON_DOCS_DIR` or `/usr/share/doc/python3.11/html/_sources`, where
    `apt-get install python3.11-doc` puts 497 reStructuredText files (11 MB, PSF licence). Nothing is
    downloaded.

    Example:
    >>> texts, sections, names = load_python_docs()
    >>> names[0], sections[0]
    ('about.rst.txt', '')
    """
    directory = pathlib.Path(directory or PYTHON_DOCS_DIR)
    paths = sorted(directory.glob("**/*.rst.txt"))
    if not paths:
        raise FileNotFoundError(
            f"No *.rst.txt files under {directory}. Install them with `apt-get install python3.11-doc`, or point "
            "PYTHON_DOCS_DIR at a folder of reStructuredText sources."
        )
    names = [path.relative_to(directory).as_posix() for path in paths]
    sections = [name.split("/")[0] if "/" in name else "" for name in names]
    texts = [path.read_text(encoding="utf-8") for path in paths]
    return texts, sections, names


def held_out_documents(sections, *, every=5):
    """Held-out flag per document: every `every`-th document of each section, in the given order."""
    held_out, seen = [], {}
    for section in sections:
        seen[section] = seen.get(section, -1) + 1
        held_out.append(seen[section] % every == every - 1)
    return np.array(held_out, bool)


def section_classification(blocks, block_document, sections, held_out, *, max_train_per_class=1500, seed=0):
    """The recipes' text task: which of `DOC_SECTIONS` a block of tokens comes from.

    `blocks` `(N, L)` are token blocks, `block_document` the document index of each (as
    `ByteLevelBPETokenizer.encode_chunks` returns them), `sections` and `held_out` per document.
    Training blocks: at most `max_train_per_class` per section, drawn from the documents not held
    out. Test blocks: from the held-out documents, as many per section as the rarest section has
    (balanced, so chance is 1/6). Returns `(train_blocks, train_labels), (test_blocks, test_labels)`.
    """
    label_of = {section: i for i, section in enumerate(DOC_SECTIONS)}
    labels = np.array([label_of.get(section, -1) for section in sections])[block_document]
    test_rows = held_out[block_document]
    rng = np.random.default_rng(seed)

    def balanced(rows, per_class):
        picked = np.concatenate([rng.permutation(np.flatnonzero(rows & (labels == c)))[:per_class]
                                 for c in range(len(DOC_SECTIONS))])
        picked = np.sort(picked)
        return blocks[picked], labels[picked]

    train = balanced((labels >= 0) & ~test_rows, max_train_per_class)
    test_counts = np.bincount(labels[(labels >= 0) & test_rows], minlength=len(DOC_SECTIONS))
    return train, balanced((labels >= 0) & test_rows, int(test_counts.min()))
