from __future__ import annotations


class StackError(Exception):
    """The local stack could not be brought up, reached or stopped.

    The message is one sentence saying what failed and which log file to read.
    """
