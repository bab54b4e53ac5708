"""analytics.v2: the event model, redaction, and the receiver's store."""

from roder_analyticsd.v2.model import (
    AnalyticsEvent,
    NotABatchError,
    Rejection,
    decode_event,
    encode_event,
    validate_batch,
)
from roder_analyticsd.v2.redact import redact_event, redact_properties

__all__ = [
    "AnalyticsEvent",
    "NotABatchError",
    "Rejection",
    "decode_event",
    "encode_event",
    "redact_event",
    "redact_properties",
    "validate_batch",
]
