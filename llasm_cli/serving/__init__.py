"""``llasm serve``: OpenAI's chat-completions wire format over HTTP."""
