//! The LLM reviewer: any OpenAI-compatible chat-completions endpoint, asked for JSON findings.

/// Placeholder until the client lands.
pub struct LlmReviewer;
