"""mkdocs hook (mkdocs.yml `hooks:`): expand the `study.docsrc` directives of every page."""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)  # the repository, for a build run without installing it


def on_config(config):
    if ROOT not in sys.path:  # mkdocs restores sys.path after loading a hook: add it for the build
        sys.path.insert(0, ROOT)
    return config


def on_page_markdown(markdown, page, config, files):
    from study import docsrc
    return docsrc.expand(markdown, page.file.src_path)
