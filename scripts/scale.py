"""`ragqa scale` (rag/commands/scale.py); older command lines still work"""

from rag.commands import script

script("scale")
