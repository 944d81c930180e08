"""Stage 5: the chat app (Gradio) and the headless browser behind its --screenshot."""
