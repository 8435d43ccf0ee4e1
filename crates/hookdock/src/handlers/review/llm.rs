//! The LLM reviewer: any OpenAI-compatible chat-completions endpoint, asked for JSON findings.
