"""TrojanScope's engine: pure Python + TensorFlow/Keras, no Qt.

Every long analysis is a generator job (see ``core.jobs``) so that the GUI
worker, the CLI and the tests drive exactly the same code.
"""
