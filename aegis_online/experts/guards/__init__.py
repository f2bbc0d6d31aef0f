"""Guard-LLM families: how each family is prompted and how its answer is read, independent of where it runs."""
