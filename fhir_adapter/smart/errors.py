"""Errors of the SMART app, each shown to the clinician as a page (never a stack trace).

LaunchError(status, message)   a launch, callback or EHR read that cannot go on; `message`
                               is written for the person at the screen
"""

from __future__ import annotations


class LaunchError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
