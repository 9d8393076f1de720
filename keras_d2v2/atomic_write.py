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
        # mkstemp makes the file private (0600); give it the mode the target has, or that `open` would give.
        os.chmod(tmp, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def append_atomically(path, text):
    """Appends `text` (e.g. one JSON line) to the file `path` by writing the old content and `text`
    to a temporary file beside it and moving that into place: a writer that fails or is killed
    leaves the file as it was, never with a cut line. Rewrites the whole file, so it suits result
    logs of up to a few megabytes, not large ones."""
    old = b""
    if os.path.exists(path):
        with open(path, "rb") as file:
            old = file.read()
    with replaced_atomically(path) as tmp:
        with open(tmp, "wb") as file:
            file.write(old + text.encode("utf-8"))


def _umask():
    """The process's umask, read without changing it where Linux tells it (`os.umask` sets it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
