"""PHQ-9 / GAD-7: QuestionnaireResponse or total Observation -> score -> US Core Observation.

Pure functions, no IO. Code tables are data (`instruments.json`); scoring and missing-item rules
are in `instruments.py`'s docstring.
"""

from mapping.scores.instruments import Instrument, ItemScore, ScreeningScore, instrument
from mapping.scores.observation import build_observation, score_observation, score_resource
from mapping.scores.questionnaire import score_questionnaire_response

__all__ = [
    "Instrument",
    "ItemScore",
    "ScreeningScore",
    "build_observation",
    "instrument",
    "score_observation",
    "score_questionnaire_response",
    "score_resource",
]
