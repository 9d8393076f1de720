"""MkDocs hook (mkdocs.yml `hooks:`): lets docs pages link to repository files outside `docs/`.

A page may link to a file of the repository, e.g. `[log](../benchmarks/results/run.jsonl)` or
`[recipe](../recipes/pretrain_image.py)`. MkDocs only knows the files under `docs/`, so such a
link would be broken in the site (and a warning, i.e. an error under `--strict`). This hook copies
each linked file into the site under `_repo/<its path in the repository>` and points the link
there. Only existing non-Markdown files are handled: a link to a missing file, or to a `.md` file
outside `docs/`, is left as written so that `--strict` still reports it.
"""

import os
import re

from mkdocs.structure.files import File

SITE_FOLDER = "_repo"
# Inline Markdown links and images: `](target)` or `](target#anchor)`, target without spaces.
LINK = re.compile(r"\]\((?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")


def _outside_target(page_path, target, docs_dir, repo_dir):
    """The repository-relative path of `target` (a link on the page at `page_path`) when it is an
    existing non-Markdown file of the repository outside `docs/`; else None."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("/"):
        return None  # a URL (http:, mailto:) or a site-absolute path
    path = os.path.normpath(os.path.join(os.path.dirname(page_path), target))
    inside_docs = os.path.commonpath([path, docs_dir]) == docs_dir
    inside_repo = os.path.commonpath([path, repo_dir]) == repo_dir
    if inside_docs or not inside_repo or not os.path.isfile(path) or path.endswith(".md"):
        return None
    return os.path.relpath(path, repo_dir).replace(os.sep, "/")


def _dirs(config):
    docs_dir = os.path.abspath(config["docs_dir"])
    return docs_dir, os.path.dirname(docs_dir)


def on_files(files, config):
    docs_dir, repo_dir = _dirs(config)
    wanted = set()
    for file in files.documentation_pages():
        with open(file.abs_src_path, encoding="utf-8") as handle:
            text = handle.read()
        for match in LINK.finditer(text):
            relative = _outside_target(file.abs_src_path, match["target"], docs_dir, repo_dir)
            if relative is not None:
                wanted.add(relative)
    for relative in sorted(wanted):
        uri = f"{SITE_FOLDER}/{relative}"
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=os.path.join(repo_dir, relative)))
    return files


def on_page_markdown(markdown, page, config, files):
    docs_dir, repo_dir = _dirs(config)
    page_path = page.file.abs_src_path
    if page_path is None:
        return markdown

    def rewrite(match):
        relative = _outside_target(page_path, match["target"], docs_dir, repo_dir)
        if relative is None:
            return match[0]
        copy = os.path.join(docs_dir, SITE_FOLDER, relative)
        link = os.path.relpath(copy, os.path.dirname(page_path)).replace(os.sep, "/")
        return f"]({link}{match['anchor'] or ''})"

    return LINK.sub(rewrite, markdown)
