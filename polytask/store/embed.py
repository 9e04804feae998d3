"""The store's sentence embeddings are ``polytask.embed``'s; these names are re-exported for the
modules that still import them from here (apps/intents.py, tools/fit_sentence_ranker.py,
benchmarks/apps.py)."""

from polytask.embed import EMBEDDER_NAME as EMBEDDER_NAME
from polytask.embed import Embedder as Embedder
from polytask.embed import get_embedder as get_embedder
