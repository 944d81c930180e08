"""Stage 6: the adapter shipped as a merged model, GGUF files, an Ollama Modelfile, a model card and leaderboard files, each checked against training and stage 2."""
