"""Retraining: proposals and approvals (orchestrator), the job that trains and registers (job), and where the
job runs (dispatch: a local subprocess or a Celery worker on a GPU host)."""
