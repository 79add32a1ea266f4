"""The ground floor: the class table, paths, the cancel token, atomic writes, the MXNet
environment, hardware facts and label metrics. Imports nothing else of the engine."""
