"""`ragqa ask` (rag/commands/ask.py); older command lines still work"""

from rag.commands import script

script("ask")
