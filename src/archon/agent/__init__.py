"""The agent: an OpenAI-compatible RAG gateway in front of one or more model servers."""
