"""Audio in: decoding untrusted files and bytes, the mel front end, the position geometry, the
microphone, and the end-of-turn detector."""
