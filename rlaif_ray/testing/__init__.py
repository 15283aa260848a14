"""Test support: the loopback fake of the Anthropic and OpenAI HTTP APIs."""
