"""`ragqa finetune` (rag/commands/finetune.py); older command lines still work"""

from rag.commands import script

script("finetune")
