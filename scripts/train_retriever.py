"""`ragqa train-retriever` (rag/commands/train_retriever.py); older command lines still work"""

from rag.commands import script

script("train-retriever")
