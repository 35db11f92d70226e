"""HTTP side of eventrunner: API, webhooks, metrics, dashboard."""
