"""TrojanScope's PySide6 shell: widgets only; every analysis runs in core/ on a worker thread."""
