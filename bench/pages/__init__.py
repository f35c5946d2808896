"""The generated parts of the docs, one module per bench part: each turns that part's results JSON
(``bench/results/*.json``) into markdown and writes nothing; ``bench/render_docs.py`` puts the text
between the page's markers."""
