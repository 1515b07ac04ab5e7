from robustlab.cli import _entry

_entry()
