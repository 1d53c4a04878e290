"""`ragqa benchmark` (rag/commands/benchmark.py); older command lines still work"""

from rag.commands import script

script("benchmark")
