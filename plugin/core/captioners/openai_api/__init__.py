"""The captioner of OpenAI-compatible servers (vLLM, Ollama, llama.cpp): requests, HTTP, server identity, image URLs."""
