"""`ragqa index` (rag/commands/build_index.py); older command lines still work"""

from rag.commands import script

script("index")
