"""Language modelling on the platform: the AWD-LSTM task, MaxUp over word-dropout masks,
NT-ASGD, fine-tuning stages and dynamic evaluation (docs/lm.md)."""
