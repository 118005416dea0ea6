"""`oncoplan listen`: the PACS-facing DICOM listener.

Storage SCP -> durable spool -> study complete after a quiet period -> routed jobs in a
persistent SQLite queue -> the app in a child process -> results C-STOREd to the destination.
Every step is recorded before it is acknowledged, so a crash or restart loses nothing.
"""
