"""`ragqa export` (rag/commands/export_transformers.py); older command lines still work"""

from rag.commands import script

script("export")
