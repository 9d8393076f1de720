"""The Python 3.11 documentation sources as a labelled text corpus (Debian's `python3.11-doc`, offline)."""

import os
import pathlib

PYTHON_DOCS_DIR = pathlib.Path(os.environ.get("PYTHON_DOCS_DIR", "/usr/share/doc/python3.11/html/_sources"))


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
