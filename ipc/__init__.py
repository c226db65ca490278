"""The wire between a turn's process and the supervisor.

Mechanism only: event structs, frame encoding, the pipe writer/reader and the
cancel token. Imports nothing from ``supervisor`` or ``worker``.
"""
