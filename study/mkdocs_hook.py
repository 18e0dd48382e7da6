"""mkdocs hook (mkdocs.yml `hooks:`): expand the `study.docsrc` directives of every page."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, when mkdocs runs uninstalled

from study import docsrc  # noqa: E402


def on_page_markdown(markdown, page, config, files):
    return docsrc.expand(markdown, page.file.src_path)
