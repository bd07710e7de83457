"""Metric names shared by the router, the model server and the drift monitor (docs/runtime-contract.md)."""

# Router (labels: namespace, deployment, version [, code | result | feature, bin]).
ROUTER_REQUESTS = "mlcycle_router_requests_total"
ROUTER_DURATION = "mlcycle_router_request_duration_seconds"
ROUTER_SHADOW = "mlcycle_router_shadow_comparisons_total"
# Live requests binned against the reference edges; feature "prediction" holds the model's scores.
ROUTER_FEATURE_BINS = "mlcycle_router_feature_values_total"
# Rows of sampled answers by what became of them: written, or dropped (buffer_full, write_failed, disabled).
ROUTER_PREDICTION_LOG = "mlcycle_router_prediction_log_rows_total"

# Model server (labels: version [, endpoint, code]).
SERVER_PREDICTIONS = "mlcycle_server_predictions_total"
SERVER_DURATION = "mlcycle_server_prediction_duration_seconds"
SERVER_SCORE = "mlcycle_server_prediction_score"
SERVER_ERRORS = "mlcycle_server_request_errors_total"
# Adaptive batching: requests refused because the queue was full, rows per batch, time queued.
SERVER_BATCH_SHED = "mlcycle_server_batch_shed_total"
SERVER_BATCH_SIZE = "mlcycle_server_batch_size"
SERVER_BATCH_WAIT = "mlcycle_server_batch_wait_seconds"

# Drift monitor.
DRIFT_SCORE = "mlcycle_drift_score"
DRIFT_DETECTED = "mlcycle_drift_detected"
DRIFT_SAMPLES = "mlcycle_drift_window_samples"

# Latency buckets in seconds: fine below 10 ms, where a model server and the router live.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)
