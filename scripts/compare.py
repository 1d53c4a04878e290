"""`ragqa compare` (rag/commands/compare.py); older command lines still work"""

from rag.commands import script

script("compare")
