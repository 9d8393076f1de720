"""Files replaced atomically: written beside the target under a temporary name, then moved into place
with `os.replace`, so that a failure at any point (a full disk, a killed process) leaves the previous
file whole."""

import contextlib
import os
import tempfile

# Keras decides the format from the name's ending, so the temporary file keeps it.
_SUFFIXES = (".weights.h5", ".weights.json", ".keras", ".h5", ".json")


@contextlib.contextmanager
def replaced_atomically(path):
    """Yields a temporary path beside `path`, with the same ending; when the block succeeds, the
    temporary file replaces `path`; when it fails, it is removed and `path` is left as it was.

    Example:
    >>> with replaced_atomically("config.json") as tmp:
    ...     with open(tmp, "w") as f:
    ...         json.dump(config, f)
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    suffix = next((s for s in _SUFFIXES if name.endswith(s)), os.path.splitext(name)[1])
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


class AtomicSaves:
    """Mixin for a `keras.Model`: `save` and `save_weights` replace their file atomically, so a
    failed save (e.g. a full disk) leaves the previous file loadable. What is not one local file
    (remote paths such as `gs://...`, `zipped=False` directories, sharded weights) and
    `overwrite=False` onto an existing file take Keras' own path."""

    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        if zipped is False or not _local_replaceable(filepath, overwrite):
            return super().save(filepath, overwrite=overwrite, zipped=zipped, **kwargs)
        with replaced_atomically(filepath) as tmp:
            super().save(tmp, overwrite=True, zipped=zipped, **kwargs)

    def save_weights(self, filepath, overwrite=True, max_shard_size=None):
        if max_shard_size is not None or not _local_replaceable(filepath, overwrite):
            return super().save_weights(filepath, overwrite=overwrite, max_shard_size=max_shard_size)
        with replaced_atomically(filepath) as tmp:
            super().save_weights(tmp, overwrite=True)


def _local_replaceable(filepath, overwrite):
    path = os.fspath(filepath)
    if "://" in path or (os.path.exists(path) and not overwrite):
        return False
    return os.path.isdir(os.path.dirname(os.path.abspath(path)))
