"""The analytics.v2 vocabulary (spec tables), in one place and import-free
so the CLI can offer the values as choices without loading the model."""

from __future__ import annotations

EVENT_NAMES = ("feature_used", "error_occurred")
REMOVED_EVENT_NAMES = ("app_started", "session_active")
DEPLOYMENT_MODES = (
    "source", "docker", "curl_installer", "desktop_installer", "npm_binary", "unknown",
)  # fmt: skip
EXECUTION_KINDS = (
    "user_session", "subagent", "always_on", "router_judge", "memory", "cron_job",
    "compaction", "tool_secondary",
)  # fmt: skip
LOOP_STAGES = (
    "module_event", "loop_start", "model_request", "model_response", "tool_prepare",
    "tool_call", "permission_check", "loop_end",
)  # fmt: skip
OUTCOMES = ("success", "failed", "aborted", "timeout", "denied")
ERROR_CATEGORIES = (
    "model_request_error", "permission_error", "tool_param_error", "tool_runtime_error",
    "tool_result_parse_error", "loop_error", "runtime_error",
)  # fmt: skip

# The properties that classify an event (stored as columns by the receiver)
CLASSIFICATION_KEYS = (
    "module", "ownerModule", "executionKind", "phase", "loopStage", "outcome",
    "errorCategory", "provider", "model",
)  # fmt: skip
# All that error_occurred may carry: classification only, never message/stack
ERROR_KEYS = (*CLASSIFICATION_KEYS, "providerBaseUrl", "code")
