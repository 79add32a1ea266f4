"""Model versions: the shipped models and every fine-tune, which one is active, rollback."""
