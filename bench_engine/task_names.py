"""The names of the tasks a bench measures, importable without torch (the TUI and the recommender use them)."""

CLASSIFICATION = "classification"
DETECTION = "detection"
TASKS = (CLASSIFICATION, DETECTION)
