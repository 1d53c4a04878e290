"""`ragqa eval-retrieval` (rag/commands/eval_retrieval.py); older command lines still work"""

from rag.commands import script

script("eval-retrieval")
