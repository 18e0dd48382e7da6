"""Study material built on the mirrors: interview questions answered by tested code
(`study.questions`), the figures and tables of the docs (`study.figures`), and the docs'
source-inclusion directives (`study.docsrc`, used by the mkdocs hook and by tests/test_docs.py)."""
