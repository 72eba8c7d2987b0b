"""The evaluation's input-error type.

Library code raises :class:`EvalInputError` (or its subclass
:class:`~xkd.evaluation.datasets.DatasetError`) when what the user gave cannot be used - an option
value, a shard directory, a split or label file, an export directory - with a message that names
the file, option or key and what was expected. The ``eval/`` command-line tools print such errors
as one ``error: ...`` line with exit status 2 (:func:`xkd.evaluation.cli.main_guard`); every
other exception is a bug and keeps its traceback.

It subclasses ``ValueError`` so that callers of the library that catch ``ValueError`` keep working.
"""
from __future__ import annotations


class EvalInputError(ValueError):
    """An evaluation input (option, file, directory) cannot be used; the message says which and why."""
